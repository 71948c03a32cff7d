"""Values read from a checkpoint's JSON files, checked before anything is sized by them.

A config.json field is a type and a range here; whether it agrees with the tensors present is
the converter's check (base.py, convert.plan_tensors). A hostile or broken file must fail with
one line naming the file and the field, never reach an allocation (10**9 layers), a division
(0 heads) or a struct.pack (a 2**40 context in GGUF's 32 bits).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from .errors import ConversionError

# llama.cpp reads GGUF's counts and sizes into int32.
MAX_INT = 2**31 - 1
# GGUF stores these as float32: far inside its normal range, so nothing rounds to 0 or inf.
MIN_FLOAT, MAX_FLOAT = 1e-30, 1e30
_HINT = "Fix {file} or download the checkpoint again."


def show(value: Any, limit: int = 40) -> str:
    """A value from an untrusted file, for a one-line message: repr (escapes newlines), cut short."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def bad_field(key: str, value: Any, why: str, file: str = "config.json") -> ConversionError:
    return ConversionError(f"{file} {key} is {show(value)}, {why}", _HINT.format(file=file))


def integer(key: str, value: Any, file: str = "config.json", low: int = 1) -> int:
    """An int from low to MAX_INT. bool is an int to Python, and JSON's 2.0 is a float: both are
    refused, not guessed at."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise bad_field(key, value, "not an integer", file)
    number = int(value)
    if not low <= number <= MAX_INT:
        raise bad_field(key, value, f"not between {low} and {MAX_INT}", file)
    return number


def positive_int(key: str, value: Any, file: str = "config.json") -> int:
    return integer(key, value, file)


def token_id(key: str, value: Any, file: str) -> int:
    return integer(key, value, file, low=0)


def positive_float(key: str, value: Any, file: str = "config.json") -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise bad_field(key, value, "not a number", file)
    try:
        number = float(value)
    except OverflowError:  # an int past float's range
        number = math.inf
    if not MIN_FLOAT <= number <= MAX_FLOAT:  # NaN fails every comparison
        raise bad_field(key, value, f"not a positive number between {MIN_FLOAT:g} and {MAX_FLOAT:g}", file)
    return number


def text(key: str, value: Any, file: str = "config.json") -> str:
    if not isinstance(value, str):
        raise bad_field(key, value, "not a string", file)
    return value


def section(key: str, value: Any, file: str = "config.json") -> dict[str, Any]:
    """A nested object, {} where the file leaves it out (null)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad_field(key, value, "not an object", file)
    return value


# A params dataclass field's type -> its check (gemma.py reads each field through these).
CHECKS = {int: positive_int, float: positive_float, str: text}
