"""schedctl: an adaptive scheduling controller for LLM serving engines."""

__version__ = "0.1.0"
