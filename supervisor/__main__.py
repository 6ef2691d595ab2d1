"""`python -m supervisor` is the same as the `rdma-shared-dp` console script."""

from cli.parser import main

raise SystemExit(main())
