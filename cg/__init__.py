"""cg: CodeGemma in the terminal. The library API is in cg.complete (complete, generate)."""

__version__ = "0.1.0"
