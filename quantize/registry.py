"""Hugging Face architecture name (config.json "architectures") -> converter class.

Converter subclasses register themselves when defined (quantize/base.py); this module imports
every architecture module once and looks names up.
"""

from __future__ import annotations

from .base import CONVERTERS, Converter
from .errors import ConversionError


def _load_all() -> None:
    from . import gemma  # noqa: F401  (defining the classes registers them)


def supported() -> list[str]:
    _load_all()
    return sorted(CONVERTERS)


def lookup(architecture: str) -> type[Converter]:
    _load_all()
    try:
        return CONVERTERS[architecture]
    except KeyError:
        raise ConversionError(f"unsupported architecture {architecture!r}",
                              "cg converts: " + ", ".join(sorted(CONVERTERS))) from None
