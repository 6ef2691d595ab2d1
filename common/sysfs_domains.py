"""The domain of every value discovery reports: what a kernel can write in sysfs (supervisor, CLI).

A value outside it
only comes from a tree that is not a real sysfs (or a kernel bug), and passing it on would fail
later and further away (a protobuf field, a CDI name, a metric label), so it stops here.
"""

from __future__ import annotations

import re

#: Char device numbers: 12-bit major, 20-bit minor (MINORBITS).
MAX_MAJOR = (1 << 12) - 1
MAX_MINOR = (1 << 20) - 1
#: PCI class code is 24 bits; ARPHRD_* link types are 16 bits.
MAX_PCI_CLASS = 0xFFFFFF
MAX_LINK_TYPE = 0xFFFF
#: IFNAMSIZ (16) includes the NUL; IB_DEVICE_NAME_MAX (64) likewise.
MAX_NETDEV_NAME = 15
MAX_RDMA_NAME = 63
#: Port numbers: the verbs ABI carries them in a u8.
MAX_PORT = 255
#: Driver (MODULE_NAME_LEN 56) and auxiliary device names, generously; port state words and link
#: layers are one short word ("ACTIVE", "InfiniBand").
MAX_DRIVER_NAME = 64
MAX_AUX_NAME = 128
MAX_WORD = 32
#: The number in uverbsN and friends: a minor-sized number has at most 7 digits.
MAX_CHAR_DIGITS = 7
#: RFC 2863 operstates, as the kernel writes them.
OPERSTATES = frozenset(
    {"unknown", "notpresent", "down", "lowerlayerdown", "testing", "dormant", "up"}
)
#: A PCI function's address as its sysfs folder is named.
BDF = re.compile(r"[0-9a-f]{4,8}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]\Z")
