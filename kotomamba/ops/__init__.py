"""kotomamba.ops."""
