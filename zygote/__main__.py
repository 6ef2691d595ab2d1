"""`python -m zygote`: the workers' fork server, started by the supervisor."""

from __future__ import annotations

import sys

from zygote.server import main

if __name__ == "__main__":
    sys.exit(main())
