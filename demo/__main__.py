"""`python -m demo`: what `rdma-shared-dp demo` execs (see demo/scenario.py)."""

import sys

from demo.scenario import main

sys.exit(main())
