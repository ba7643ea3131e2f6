"""kotomamba.model."""
