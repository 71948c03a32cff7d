"""quantize's own errors. It is a library: callers (cg's error funnel) map these to exit codes.

Each carries a message for the user and a hint for the next step.
"""

from __future__ import annotations


class QuantizeError(Exception):
    """Base class: a message and a hint."""

    default_hint = ""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = self.default_hint if hint is None else hint


class ConversionError(QuantizeError):
    """The checkpoint (config, weights, tokenizer) cannot be converted as given: bad input."""


class OutputExistsError(QuantizeError):
    default_hint = "Pass --force to overwrite it, or choose another path with -o."


class DiskSpaceError(QuantizeError):
    default_hint = "Free some disk space or write the output elsewhere (-o, CG_HOME)."


class QuantizerFailed(QuantizeError):
    """llama.cpp's quantizer returned an error (not the input's fault as far as we can tell)."""

    default_hint = "Run with CG_DEBUG=1 and --verbose to see llama.cpp's log."
