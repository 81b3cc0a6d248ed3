"""``python -m fastrnn``: a short demo, forward and backward checked against the reference."""

from ._cli import main

raise SystemExit(main())
