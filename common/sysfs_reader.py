"""Reading sysfs attributes and folders without ever raising (supervisor and CLI).

`SysfsReader` is the part of a discovery scan that touches the disk: one open+read per attribute,
one listing per folder, and every entry it cannot use reported as a `ScanProblem` whose `reason`
is one of `PROBLEM_REASONS` (stable: used as a metric label), logged with what to check. The
parsing helpers below accept only what sysfs writes.
"""

from __future__ import annotations

import logging
import os

from common.devices import ScanProblem

log = logging.getLogger("common.discovery")

#: Every `ScanProblem.reason` discovery emits, with what the operator should check.
PROBLEM_REASONS: dict[str, str] = {
    "no_pci_bus": "is sysfs mounted, and does --host-root point at the host's root folder?",
    "dangling_link": "the link's target is gone; was the device removed mid-scan or the "
    "driver unloaded? rerun discovery, and check dmesg",
    "missing_file": "the kernel did not create this attribute; check the driver version and dmesg",
    "not_a_file": "a folder sits where sysfs has an attribute file; is --host-root a real sysfs?",
    "not_a_dir": "a file sits where sysfs has a folder; is --host-root a real sysfs?",
    "not_a_link": "sysfs has a symlink here; is --host-root a real sysfs or a flattened copy?",
    "bad_encoding": "the attribute is not UTF-8 text; is --host-root a real sysfs?",
    "bad_value": "the attribute's value cannot be parsed; check the driver version and dmesg",
    "out_of_range": "the value is outside what the kernel can report (a NUMA node, device "
    "number, port or name length); is --host-root a real sysfs? check dmesg",
    "unreadable": "the attribute cannot be read; check the plugin's privileges (it needs to read "
    "/sys) and dmesg for I/O errors",
}

# Sysfs attributes are at most a page; reading more would only mean the tree is not sysfs.
_MAX_ATTRIBUTE = 65536


class SysfsReader:
    """Reads under one root, collecting the problems met.

    Paths are handled as strings relative to the root (what problems report); a failed read is
    diagnosed only then (was the entry's folder a dangling link?), so the common path is one
    open+read per attribute.
    """

    def __init__(self, host_root: str) -> None:
        self.root = host_root
        self.prefix = host_root if host_root.endswith("/") or not host_root else host_root + "/"
        self.problems: list[ScanProblem] = []

    def problem(self, reason: str, rel: str, detail: str) -> None:
        self.problems.append(ScanProblem(reason=reason, path=rel, detail=detail))
        log.warning(
            "sysfs problem reason=%s path=%s: %s; to check: %s",
            reason,
            rel,
            detail,
            PROBLEM_REASONS.get(reason, ""),
        )

    def read(self, rel: str, *, optional: bool = False) -> str | None:
        """The stripped text of an attribute, or None (a problem unless optional and absent)."""
        path = self.prefix + rel
        try:
            # O_NONBLOCK: a FIFO planted in the tree must not hang the scan.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except (FileNotFoundError, NotADirectoryError):
            if os.path.islink(path):
                self.problem("dangling_link", rel, "attribute link points nowhere")
            elif not optional:
                self.problem("missing_file", rel, "attribute file is missing")
            return None
        except OSError as err:
            self.problem("unreadable", rel, f"cannot open: {err.strerror or err}")
            return None
        try:
            raw = os.read(fd, _MAX_ATTRIBUTE)
        except IsADirectoryError:
            self.problem("not_a_file", rel, "expected an attribute file, found a folder")
            return None
        except OSError as err:
            self.problem("unreadable", rel, f"cannot read: {err.strerror or err}")
            return None
        finally:
            os.close(fd)
        try:
            return raw.decode("utf-8").strip()
        except UnicodeDecodeError as err:
            self.problem("bad_encoding", rel, f"not UTF-8 at byte {err.start}")
            return None

    def read_in(self, entry: str, name: str, what: str) -> tuple[bool, str | None]:
        """Read `entry/name`: (False, None) when `entry` itself is broken (reported as such),
        else (True, text or None)."""
        rel = f"{entry}/{name}"
        text = self.read(rel, optional=True)
        if text is None and not os.path.lexists(self.prefix + rel):
            if not self.is_dir(entry, what):
                return False, None
            self.problem("missing_file", rel, "attribute file is missing")
        return True, text

    def listdir(self, rel: str) -> list[str] | None:
        """Sorted, UTF-8-clean entries of a folder; None when absent (silently) or broken."""
        path = self.prefix + rel
        try:
            names = os.listdir(path)
        except FileNotFoundError:
            if os.path.islink(path):
                self.problem("dangling_link", rel, "folder link points nowhere")
            return None
        except NotADirectoryError:
            self.problem("not_a_dir", rel, "expected a folder, found a file")
            return None
        except OSError as err:
            self.problem("unreadable", rel, f"cannot list: {err.strerror or err}")
            return None
        clean = []
        for name in names:
            if name.isascii() or is_utf8(name):
                clean.append(name)
            else:
                shown = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                self.problem("bad_encoding", f"{rel}/{shown}", "entry name is not UTF-8")
        clean.sort()
        return clean

    def is_dir(self, rel: str, what: str) -> bool:
        """True for a folder (or a link to one); a problem for a dangling link or a file."""
        path = self.prefix + rel
        if os.path.isdir(path):
            return True
        if os.path.islink(path) and not os.path.exists(path):
            self.problem("dangling_link", rel, f"{what} link points nowhere")
        elif os.path.lexists(path):
            self.problem("not_a_dir", rel, f"expected the {what} folder, found a file")
        else:
            self.problem("missing_file", rel, f"{what} folder vanished during the scan")
        return False

    def name_ok(self, rel: str, name: str, limit: int, what: str) -> bool:
        """A kernel object name: 1..limit bytes, printable, no whitespace; else a problem."""
        size = len(name.encode("utf-8", "surrogateescape"))
        if size > limit:
            self.problem(
                "out_of_range", rel, f"{what} name is {size} bytes, more than the kernel's {limit}"
            )
            return False
        if not is_name(name):
            self.problem("bad_value", rel, f"{what} name {shown(name)} has blanks or controls")
            return False
        return True


def parse_hex(text: str) -> int | None:
    try:
        return int(text, 16)
    except ValueError:
        return None


def is_number(text: str) -> bool:
    return text.isascii() and text.isdigit()


def parse_int(text: str) -> int | None:
    """A decimal integer as sysfs writes it (optional sign), without Python's extras: no "_"
    separators, no non-ASCII digits, and none so long that int() itself refuses it."""
    digits = text[1:] if text[:1] in ("-", "+") else text
    if not digits or len(digits) > 4000 or not is_number(digits):
        return None
    return int(text)


def is_name(name: str) -> bool:
    """Printable, without blanks: what a kernel object name (and a log field) can hold."""
    return name.isprintable() and not any(c.isspace() for c in name)


def shown(text: str) -> str:
    """A value quoted in a log line or problem, cut short: a fake tree can hold 64 KiB."""
    return repr(text[:40] + "…" if len(text) > 40 else text)


def is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
