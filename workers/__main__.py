"""`python -m workers`: the per-resource worker process, started by the supervisor."""

from __future__ import annotations

import os
import sys

# gRPC's C core narrates connection churn (GOAWAY on every kubelet restart) at INFO level on
# stderr, outside our log format; the worker logs what matters itself.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from workers.main import main

if __name__ == "__main__":
    sys.exit(main())
