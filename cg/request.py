"""How to load and run the model: the options every model-running command and library call
shares, and their defaults, declared once (the CLI builds its options from these)."""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_CTX = 4096  # not the model's 8192: keeps memory and the CPU prompt cost modest
DEFAULT_MAX_TOKENS = 128  # complete / infill
GENERATE_MAX_TOKENS = 256
EVAL_MAX_TOKENS = 256
# Reuse after a change (splicing, reuse.py) by default? Decided by measurement on real weights:
# benchmarks/README.md, section 6 (bench_reuse_quality.py). No K reached the 95% identical
# continuations the default needs (nor does resuming a prefix off its batch grid): off.
SPLICE_BY_DEFAULT = False


@dataclass(frozen=True)
class Sampling:
    """Greedy by default (temperature 0); repeat penalty 1.0 as Google's GGUF README advises."""

    temperature: float = 0.0
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    seed: int = 0


@dataclass(frozen=True)
class RunOptions:
    """Where the model runs, how it samples, and the limits of one completion."""

    model: str | None = None  # a GGUF path or installed name (None: the default model)
    n_ctx: int = DEFAULT_CTX
    threads: int | None = None
    verbose: bool = False  # llama.cpp's log on stderr
    gpu_layers: int | None = None  # None: every layer when llama.cpp has a GPU backend, else none
    # run on this llama-server or OpenAI-compatible server instead; kept out of repr (a URL may hold a password)
    server: str | None = field(default=None, repr=False)
    server_api: str | None = None  # "llama" or "openai"; None: found from the URL
    api_key: str | None = field(default=None, repr=False)  # never shown
    sampling: Sampling = Sampling()
    max_tokens: int = DEFAULT_MAX_TOKENS
    max_time: float | None = None  # seconds; then the completion ends at the next newline
    max_prompt_tokens: int | None = None  # None: the engine's default window (2048 on CPU, else the context)
    logit_bias: dict[int, float] | None = None
    quiet: bool = False  # no warnings or notes on stderr
    prompt_cache: bool = False  # share evaluated prompts across processes (cg/engine/local/prompt_cache.py); the CLI turns it on
    progress: bool = False  # show prompt evaluation on stderr (the CLI, on a terminal)
    exact: bool = not SPLICE_BY_DEFAULT  # reuse computed prompts only where the result is a fresh run's bit for bit
