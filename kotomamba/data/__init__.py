"""kotomamba.data."""
