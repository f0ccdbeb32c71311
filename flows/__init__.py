"""Prefect flows and the command line: thin wrappers over `pipeline`."""
