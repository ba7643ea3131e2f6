"""``python -m kotomamba`` is the same as the ``kotomamba`` console script."""
import sys

from kotomamba.cli import main

sys.exit(main())
