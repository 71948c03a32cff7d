"""Runtime helpers that cg and quantize both use, and nothing else: writing files atomically,
CodeGemma's special-token table, llama.cpp's log capture, and signals turned into exceptions at
safe points.

Imports run one way: cg -> cg_core <- quantize. This package imports neither of them.
"""
