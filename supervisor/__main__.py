"""`python -m supervisor` is the same as the `rdma-shared-dp` console script."""

from supervisor.cli import main

raise SystemExit(main())
