"""kotomamba.train."""
