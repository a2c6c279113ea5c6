"""lastvit-eval: evaluation toolkit for frozen Vision Transformer checkpoints."""

__version__ = "0.1.0"
