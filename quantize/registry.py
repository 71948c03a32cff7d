"""Architecture name (config.json "architectures") -> converter class.

A base converter owns the pipeline; each architecture overrides its parameters, tensor-name
mapping, expected shapes and tensor transforms (the shape of llama.cpp's ModelBase.register).
"""

from __future__ import annotations

from cg.errors import ConversionError

_CONVERTERS: dict[str, type] = {}


def register(*hf_architectures: str):
    def wrap(cls):
        for name in hf_architectures:
            _CONVERTERS[name] = cls
        return cls

    return wrap


def supported() -> list[str]:
    _load_all()
    return sorted(_CONVERTERS)


def lookup(architecture: str) -> type:
    _load_all()
    try:
        return _CONVERTERS[architecture]
    except KeyError:
        raise ConversionError(f"unsupported architecture {architecture!r}",
                              "cg converts: " + ", ".join(sorted(_CONVERTERS))) from None


def _load_all() -> None:
    from . import gemma  # noqa: F401  (registers itself)
