"""Data: dataset registration (on import), metadata, synthetic data."""
from . import datasets  # noqa: F401  (registers datasets)
