"""Every default and environment variable of cg, declared once and read here only.

The library and the CLI read the same variables through these functions (the CLI's options name
them as their `envvar`, so `--help` and errors say which one); README's tables are tested against
VARIABLES. Each variable is read when it is used, not at import: a long-running process (`cg
serve`) and tests see a change. One rule for on/off values: FLAG_ON / FLAG_OFF.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from cg.errors import UsageError

# Defaults (the CLI's and the library's)
DEFAULT_CTX = 4096  # not the model's 8192: keeps memory and the CPU prompt cost modest
CTX_STEP = 256  # llama.cpp rounds a context up to a multiple of this
DEFAULT_MAX_TOKENS = 128  # complete / infill
GENERATE_MAX_TOKENS = 256
EVAL_MAX_TOKENS = 256
# Prompt tokens evaluated by default on the CPU, where reading the prompt is the whole cost
# (benchmarks/README.md, sections 2 and 4). Elsewhere: the whole context.
CPU_WINDOW = 2048
# Reuse after a change (splicing, engine/local/reuse.py) by default, and how many splices in a row
# before a state is evaluated fresh again: decided on real weights by what users see (the next
# line against the file, paired with fresh runs): benchmarks/README.md, section 6.
SPLICE_BY_DEFAULT = True
SPLICE_DEPTH = 2
DEFAULT_MARKER = "cg: fill"  # the marker comment `cg infill` fills and `cg check` finds
PROMPT_CACHE_MB = 1024  # the on-disk prompt cache's size
SERVER_TIMEOUT = 600.0  # seconds one request to a server may take: a long prompt on a busy CPU server
FLAG_ON = ("1", "true", "yes", "on")
FLAG_OFF = ("0", "false", "no", "off")  # empty is unset


@dataclass(frozen=True)
class Variable:
    name: str
    meaning: str
    secret: bool = False  # never shown (doctor says only that it is set)
    url: bool = False  # may hold user:password@: shown without it


HOME = Variable("CG_HOME", "where models and caches live (default $XDG_CACHE_HOME/cg, else ~/.cache/cg)")
MODEL = Variable("CG_MODEL", "the model when --model is not given (a GGUF path or installed name)")
SERVER = Variable("CG_SERVER", "run on this llama-server or OpenAI-compatible server (URL) instead", url=True)
API_KEY = Variable("CG_API_KEY", "the server's API key", secret=True)
SERVER_TIMEOUT_VAR = Variable("CG_SERVER_TIMEOUT", f"seconds one request to a server may take ({SERVER_TIMEOUT:g})")
GPU_LAYERS = Variable("CG_GPU_LAYERS", "layers on the GPU (-1: all)")
MAX_PROMPT_TOKENS = Variable("CG_MAX_PROMPT_TOKENS", f"the prompt window ({CPU_WINDOW} on the CPU)")
EXACT = Variable("CG_EXACT", "reuse earlier prompts only bit for bit (on/off)")
SPLICE = Variable("CG_SPLICE", "also reuse what follows a change (on/off)")
PROMPT_CACHE = Variable("CG_PROMPT_CACHE", "the on-disk prompt cache (on/off, default on)")
PROMPT_CACHE_SIZE = Variable("CG_PROMPT_CACHE_MB", f"the on-disk prompt cache's size in MiB ({PROMPT_CACHE_MB})")
LLAMA_SERVER = Variable("CG_LLAMA_SERVER", "the llama-server binary `cg serve --llama-server` starts")
DEBUG = Variable("CG_DEBUG", "show the traceback behind an error (on/off)")
AMX = Variable("CG_AMX", "let llama.cpp repack weights for AMX where it was built with it (on/off, default off: "
                         "its AMX kernels crash on some machines)")
VARIABLES = (HOME, MODEL, SERVER, API_KEY, SERVER_TIMEOUT_VAR, GPU_LAYERS, MAX_PROMPT_TOKENS, EXACT, SPLICE,
             PROMPT_CACHE, PROMPT_CACHE_SIZE, LLAMA_SERVER, DEBUG, AMX)
# Other tools' variables cg follows as they do (huggingface_hub, the XDG base directories)
HF_ENDPOINT = Variable("HF_ENDPOINT", "the hub's address (default https://huggingface.co)")
HF_TOKEN = Variable("HF_TOKEN", "a Hugging Face token for gated models", secret=True)
HF_HUB_OFFLINE = Variable("HF_HUB_OFFLINE", "use only what the hub cache holds (on/off)")
HF_HOME = Variable("HF_HOME", "huggingface_hub's home (its cache is HF_HOME/hub)")
HF_HUB_CACHE = Variable("HF_HUB_CACHE", "huggingface_hub's download cache")
XDG_CACHE_HOME = Variable("XDG_CACHE_HOME", "the user's cache folder (default ~/.cache)")


def text(var: Variable) -> str | None:
    """The variable's value; None when it is unset or empty."""
    return os.environ.get(var.name) or None


def flag(var: Variable, default: bool = False) -> bool:
    raw = os.environ.get(var.name, "")
    value = raw.strip().lower()
    if not value:
        return default
    if value in FLAG_ON or value in FLAG_OFF:
        return value in FLAG_ON
    raise UsageError(f"{var.name}={raw!r} is not a valid boolean", f"Set it to 1 or 0, or unset it ({var.meaning}).")


def integer(var: Variable, low: int) -> int | None:
    """A whole number of at least low; None when unset."""
    raw = text(var)
    if raw is None:
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        value = low - 1
    if value < low:
        raise UsageError(f"{var.name}={raw!r} is not a whole number of at least {low}", f"Unset {var.name} or fix it.")
    return value


def number(var: Variable, default: float, *, positive: bool, what: str, hint: str) -> float:
    """A finite number (above zero where positive, else at least zero); default when unset.
    what: the number asked for, as the error names it."""
    raw = text(var)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and (value > 0 if positive else value >= 0)):
        raise UsageError(f"{var.name}={raw!r} is not {what}", hint)
    return value


def is_on(var: Variable) -> bool:
    """On (FLAG_ON), anything else off, never an error: for the variable read inside the error
    funnel (CG_DEBUG) and those other tools read too, with this rule (HF_HUB_OFFLINE)."""
    return os.environ.get(var.name, "").strip().lower() in FLAG_ON


def debug() -> bool:
    return is_on(DEBUG)


def server_timeout() -> float:
    return number(SERVER_TIMEOUT_VAR, SERVER_TIMEOUT, positive=True, what="a number of seconds",
                  hint="Set it to e.g. 600.")


def prompt_cache_on() -> bool:
    return flag(PROMPT_CACHE, default=True)


def prompt_cache_bytes() -> int:
    mb = number(PROMPT_CACHE_SIZE, PROMPT_CACHE_MB, positive=False, what="a size in MiB",
                hint="Set it to a number such as 1024, or CG_PROMPT_CACHE=0 to turn the cache off.")
    return int(mb * 2**20)


def amx() -> bool:
    return flag(AMX)


def exact_reuse() -> bool:
    """CG_EXACT / CG_SPLICE, else the default: must reuse be bit-exact?"""
    exact, splice = flag(EXACT), flag(SPLICE)
    if exact and splice:
        raise UsageError("CG_EXACT and CG_SPLICE contradict each other", "Unset one of them.")
    return exact or not (splice or SPLICE_BY_DEFAULT)
