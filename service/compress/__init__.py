"""Compression jobs as the gateway sees them: creation, reading, cancel, public shapes."""
