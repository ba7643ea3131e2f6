"""kotomamba.evaluate."""
