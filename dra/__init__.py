"""The DRA driver: one child process of the supervisor per node (see docs/dra.md)."""
