"""asv benchmarks for fastrnn, one module per package module; run them with ``asv run``."""
