"""What every API's request becomes (FimRequest), the bounds on requests, and the typed reading
of a JSON body: a wrong type, NaN or an out-of-range number is a BadRequest (a 400 with a JSON
error), never an exception from deeper down."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from cg.request import Sampling
from cg.settings import DEFAULT_MAX_TOKENS
from cg_core.tokens import BY_NAME, SENTINELS

MAX_BODY = 16 * 2**20  # bytes of a request body (a 16 MiB file, as `cg complete` takes)
MAX_PREDICT = 4096  # tokens one request may ask for (-1 asks for the default)
MAX_EXTRA = 64  # input_extra chunks (llama.vim sends a ring of 16)
MAX_STOPS = 16  # stop texts
MAX_STOP_CHARS = 256  # characters of one stop text (matching a stop costs its length squared each token)
MAX_NAME = 256  # characters of a model name (every streamed piece repeats it)
MAX_LIST = 64  # other lists (samplers, response_fields)
MAX_TIME_MS = 600_000  # t_max_predict_ms
MAX_BIAS = 1024  # logit_bias entries
BIAS_RANGE = 1e4  # a bias beyond this bans or forces a token as surely


class BadRequest(Exception):
    """The request cannot be used: answered with this status and a JSON error body."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message, self.status = message, status


@dataclass(frozen=True)
class FimRequest:
    """One fill-in-the-middle, in the terms of cg.complete.stream_complete."""

    prefix: str
    suffix: str = ""
    context: tuple[tuple[str, str], ...] = ()  # (path, text) of other files, nearest first
    max_tokens: int = DEFAULT_MAX_TOKENS  # 0: evaluate the prompt, keep it, generate nothing
    max_time: float | None = None  # seconds, as --max-time
    sampling: Sampling = Sampling()
    stop: tuple[str, ...] = ()
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias), as --logit-bias
    slot: int | None = None  # a newer request naming the same slot replaces this one


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_json(raw: bytes) -> Fields:
    """The body as a JSON object; Python's json would take NaN and Infinity, JSON does not."""
    try:
        data = json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise BadRequest("the body is nested too deeply") from None
    except ValueError as exc:  # also UnicodeDecodeError
        raise BadRequest(f"the body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    if _ESCAPED_SURROGATE.search(raw) and _holds_lone_surrogate(data):
        raise BadRequest("the body holds a lone UTF-16 surrogate (\\ud800-\\udfff unpaired): not text")
    return Fields(data)


# Only a \u escape makes a surrogate (UTF-8 cannot encode one); json pairs a valid pair into one
# character and leaves a lone one in the string, which no tokenizer or UTF-8 writer takes.
_ESCAPED_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _holds_lone_surrogate(data: Any) -> bool:
    stack = [data]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            if _SURROGATE.search(node):
                return True
        elif isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False


class Fields:
    """A JSON object read field by field, each checked against the type it must have. Absent
    and null fields take the default; unknown fields are ignored (clients send extras)."""

    def __init__(self, data: dict[str, Any], where: str = ""):
        self.data, self.where = data, where

    def _get(self, name: str) -> Any:
        return self.data.get(name)

    def _bad(self, name: str, what: str) -> BadRequest:
        return BadRequest(f"{self.where}{name} must be {what}")

    def has(self, name: str) -> bool:
        return self._get(name) is not None

    def text(self, name: str, default: str = "", limit: int | None = None) -> str:
        value = self._get(name)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self._bad(name, "a string")
        if limit is not None and len(value) > limit:
            raise self._bad(name, f"at most {limit} characters")
        return value

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        value = self._get(name)
        if value is None:
            return default
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # 128.0 from a client that writes every number as a float
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._bad(name, "an integer")
        if not low <= value <= high:
            raise self._bad(name, f"in {low}..{high}")
        return value

    def number(self, name: str, default: float, low: float, high: float) -> float:
        value = self._get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise self._bad(name, "a finite number")
        if not low <= value <= high:
            raise self._bad(name, f"in {low}..{high}")
        return float(value)

    def flag(self, name: str, default: bool) -> bool:
        value = self._get(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self._bad(name, "true or false")
        return value

    def texts(self, name: str, limit: int = MAX_LIST, chars: int = MAX_STOP_CHARS) -> tuple[str, ...]:
        """A list of strings, each at most `chars` long (a single string is a list of one, as
        OpenAI's `stop`)."""
        value = self._get(name)
        if value is None:
            return ()
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
            raise self._bad(name, "a list of strings")
        if len(items) > limit:
            raise self._bad(name, f"at most {limit} strings")
        if any(len(v) > chars for v in items):
            raise self._bad(name, f"strings of at most {chars} characters")
        return tuple(items)

    def objects(self, name: str, limit: int) -> list[Fields]:
        value = self._get(name)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self._bad(name, "a list of objects")
        if len(value) > limit:
            raise self._bad(name, f"at most {limit} items")
        return [Fields(v, f"{self.where}{name}[{i}].") for i, v in enumerate(value)]

    def object(self, name: str) -> Fields:
        value = self._get(name)
        if value is None:
            return Fields({}, f"{self.where}{name}.")
        if not isinstance(value, dict):
            raise self._bad(name, "an object")
        return Fields(value, f"{self.where}{name}.")


def rendered_fim(prompt: str) -> tuple[str, str] | None:
    """(prefix, suffix) of a prompt that is CodeGemma's PSM layout written out as text,
    `<|fim_prefix|>P<|fim_suffix|>S<|fim_middle|>`, with no other sentinel in it: what Continue
    sends a server it believes cannot take `suffix` (its `openai` provider, Ollama's `raw`).
    Anything else, including sentinel text inside code, stays text."""
    pre, suf, mid = (t.text for t in (BY_NAME["fim_pre"], BY_NAME["fim_suf"], BY_NAME["fim_mid"]))
    if not (prompt.startswith(pre) and prompt.endswith(mid)) or len(prompt) < len(pre) + len(mid):
        return None
    body = prompt[len(pre):len(prompt) - len(mid)]
    prefix, found, suffix = body.partition(suf)
    if not found or any(t.text in prefix or t.text in suffix for t in SENTINELS):
        return None
    return prefix, suffix


def prefix_and_suffix(prompt: str, suffix: str | None) -> tuple[str, str]:
    """The code before and after the cursor from a prompt and an optional suffix field."""
    if suffix is None:
        return rendered_fim(prompt) or (prompt, "")
    return prompt, suffix


def logit_bias(fields: Fields) -> tuple[tuple[int, float], ...]:
    """llama-server's `[[id, bias], ...]` or OpenAI's `{"id": bias}`; ids are checked against the
    vocabulary where the completion runs (a 400 naming the id)."""
    value = fields.data.get("logit_bias")
    if value is None:
        return ()
    pairs = list(value.items()) if isinstance(value, dict) else value
    if not isinstance(pairs, list) or len(pairs) > MAX_BIAS:
        raise BadRequest(f"{fields.where}logit_bias must be [[token id, bias], ...] or {{\"token id\": bias}} "
                         f"(at most {MAX_BIAS})")
    out = []
    for pair in pairs:
        if not (isinstance(pair, list | tuple) and len(pair) == 2):
            raise BadRequest(f"{fields.where}logit_bias entries must be [token id, bias]")
        key = pair[0]
        if isinstance(key, str) and key.isascii() and key.isdigit() and len(key) <= 10:
            key = int(key)  # OpenAI's object keys are strings
        token = Fields({"id": key, "bias": pair[1]}, f"{fields.where}logit_bias ")
        out.append((token.integer("id", 0, 0, 1 << 31), token.number("bias", 0.0, -BIAS_RANGE, BIAS_RANGE)))
    return tuple(out)


def sampling(fields: Fields) -> Sampling:
    """temperature, top_k, top_p, min_p, repeat_penalty and seed under the names all three APIs
    use; absent ones keep cg's defaults (greedy)."""
    base = Sampling()
    seed = fields.integer("seed", base.seed, -1, 2**32 - 1)
    return Sampling(temperature=fields.number("temperature", base.temperature, 0.0, 100.0),
                    top_k=fields.integer("top_k", base.top_k, 0, 1 << 30),
                    top_p=fields.number("top_p", base.top_p, 0.0, 1.0),
                    min_p=fields.number("min_p", base.min_p, 0.0, 1.0),
                    repeat_penalty=fields.number("repeat_penalty", base.repeat_penalty, 0.0, 10.0),
                    seed=base.seed if seed == -1 else seed)  # -1: llama-server's and Ollama's "any seed"


def max_tokens(fields: Fields, name: str) -> int:
    """A token limit: 0 evaluates the prompt only; -1 (llama-server's and Ollama's "no limit")
    is cg's default, since cg's cuts end a completion long before any limit."""
    value = fields.integer(name, DEFAULT_MAX_TOKENS, -2, MAX_PREDICT)
    return DEFAULT_MAX_TOKENS if value < 0 else value
