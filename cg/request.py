"""One completion asked for: the Request every caller fills (the CLI, `cg serve`, infill, eval,
the library), and the Load it names (which model, where and how it runs).

Settings left as None come from the environment when the request is resolved (cg/settings.py
reads it), so the library and the CLI behave the same: `Request()` with CG_SERVER set runs on
that server, as `cg complete` does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING

from cg import settings

if TYPE_CHECKING:
    import numpy as np

# logits_processor(input_ids, logits) -> logits, as llama-cpp-python calls it (local engine only)
LogitsProcessor = Callable[["np.ndarray", "np.ndarray"], "np.ndarray"]


class Api(StrEnum):
    """The server APIs cg speaks."""

    LLAMA = "llama"  # llama-server's native /completion
    OPENAI = "openai"  # /v1/completions with token-id prompts


def header_safe(text: str) -> bool:
    """Printable ASCII (spaces included): what an HTTP header can carry as it is (an API key)."""
    return text.isprintable() and text.isascii()


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
class Load:
    """Which model and where it runs: one engine per distinct Load, made once per process."""

    model: str | None  # a GGUF path or installed name (None: CG_MODEL, else the default model)
    n_ctx: int
    threads: int | None
    gpu_layers: int | None  # None: every layer when llama.cpp has a GPU backend, else none
    verbose: bool  # llama.cpp's log on stderr
    server: str | None = field(repr=False)  # None: in this process; kept out of repr (a URL may hold a password)
    server_api: str | None
    api_key: str | None = field(repr=False)  # never shown


@dataclass(frozen=True)
class Request:
    """Every setting of one completion, grouped by what it decides. None: the environment's
    value (CG_MODEL, CG_SERVER, CG_API_KEY, CG_GPU_LAYERS, CG_MAX_PROMPT_TOKENS, CG_EXACT /
    CG_SPLICE), else the default."""

    # which model, where it runs (Load)
    model: str | None = None
    n_ctx: int = settings.DEFAULT_CTX
    threads: int | None = None
    gpu_layers: int | None = None
    verbose: bool = False
    server: str | None = field(default=None, repr=False)  # "": in this process, whatever CG_SERVER says
    server_api: str | None = None  # "llama" or "openai"; None: found from the URL
    api_key: str | None = field(default=None, repr=False)
    # the prompt
    path: str | None = None  # the file's path: the header line CodeGemma was trained with, the block rules' language
    context: Sequence[tuple[str, str]] = ()  # other files as (path, content), nearest first
    spm: bool = False  # suffix-prefix-middle order instead of PSM
    require_fim: bool = False  # fail on a model without FIM tokens instead of continuing the prefix
    max_prompt_tokens: int | None = None  # None: the engine's window (CPU_WINDOW on the CPU, else the context)
    chat: bool | None = None  # generate: the instruction turn format on or off (None: from the model)
    # sampling
    sampling: Sampling = Sampling()
    logit_bias: dict[int, float] | None = None
    logits_processor: LogitsProcessor | None = field(default=None, repr=False, compare=False)  # tests
    # where it stops
    max_tokens: int = settings.DEFAULT_MAX_TOKENS
    max_time: float | None = None  # seconds; then the completion ends at the next newline
    stop: Sequence[str] = ()  # extra texts that end it
    max_lines: int | None = None
    single_line: bool = False
    block_stop: bool = True  # end where the code block at the cursor ends (the language from path)
    one_definition: bool | None = None  # generate: after one top-level definition (None: when asked for one)
    raw: bool = False  # generate: keep fences and what follows them
    # what may be reused
    exact: bool | None = None  # only what gives a fresh run's result bit for bit (None: CG_EXACT / CG_SPLICE)
    prompt_cache: bool = False  # share evaluated prompts across processes (the CLI turns it on)
    # what is said on stderr
    quiet: bool = False  # no warnings or notes
    progress: bool = False  # prompt evaluation shown (the CLI, on a terminal)
    # set by resolved(): the environment has been read, so every later layer takes the request as it is
    environment_read: bool = field(default=False, repr=False, compare=False)

    @property
    def load(self) -> Load:
        """The engine this request runs on, with the environment's defaults."""
        server = self.server if self.server is not None else settings.text(settings.SERVER)
        key = self.api_key if self.api_key is not None else settings.text(settings.API_KEY)
        layers = self.gpu_layers if self.gpu_layers is not None else settings.integer(settings.GPU_LAYERS, -1)
        return Load(self.model, self.n_ctx, self.threads, layers, self.verbose, server or None, self.server_api, key)

    def resolved(self) -> Request:
        """The request with what the environment decides filled in: read once per completion,
        by the first layer that needs it (the prompt's window, then the decode loop)."""
        if self.environment_read:
            return self
        window = self.max_prompt_tokens
        if window is None:
            window = settings.integer(settings.MAX_PROMPT_TOKENS, 16)
        exact = self.exact if self.exact is not None else settings.exact_reuse()
        return replace(self, max_prompt_tokens=window, exact=exact, environment_read=True)
