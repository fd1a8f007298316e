"""nightjar-rl: learn when and how far to speculate in LLM serving."""

__version__ = "0.1.0"
