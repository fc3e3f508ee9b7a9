"""Memory: low-memory mode (weights in page-locked host memory, swapped in when a model works)."""
