"""DRA device-health API v1alpha1: `api.proto` and its generated modules."""
