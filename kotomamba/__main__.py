"""``python -m kotomamba`` is the same as the ``kotomamba`` console script."""
from kotomamba.cli import run

run()
