"""The header key of the lorareg record and its schema version: constants that header-level code (verify, inspect)
needs without loading the pydantic models of ``schema.metadata``."""

SCHEMA_VERSION = "1"
HEADER_KEY = "lorareg"
