"""quantize's own errors. It is a library: callers (cg's error funnel) map these to exit codes.

Each carries a message for the user and a hint for the next step.
"""

from __future__ import annotations

from cg_core.errors import DiskSpaceError, ReportedError

__all__ = ["ConversionError", "DiskSpaceError", "OutputExistsError", "QuantizeError", "QuantizerFailed"]


class QuantizeError(ReportedError):
    """Base class: a message and a hint."""


class ConversionError(QuantizeError):
    """The checkpoint (config, weights, tokenizer) cannot be converted as given: bad input."""


class OutputExistsError(QuantizeError):
    default_hint = "Pass --force to overwrite it, or choose another path with -o."


class QuantizerFailed(QuantizeError):
    """llama.cpp's quantizer returned an error (not the input's fault as far as we can tell)."""

    default_hint = "Run with CG_DEBUG=1 and --verbose to see llama.cpp's log."
