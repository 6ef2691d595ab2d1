"""DRA plugin API v1: `api.proto` and its generated modules."""
