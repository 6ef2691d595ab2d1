"""End-to-end suites that need real outside programs."""
