"""Metrics (the one list of metric names) and pure statistics; no file system."""
