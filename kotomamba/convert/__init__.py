"""kotomamba.convert."""
