"""rsbench: a comparative benchmark suite for remote-sensing image-text retrieval."""

__version__ = "0.1.0"
