"""The local engine: llama-cpp-python in this process, on the CPU or with layers on a GPU.

With kvcache.py, the only code that runs llama.cpp for inference and reaches into
llama-cpp-python's internals. Everything here works on token ids; what a new prompt reuses of
the KV cache is kvcache.py's, prompt layouts are cg/prompt/'s.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cg.engine import (
    EngineInfo,
    LogitsProcessor,
    Piece,
    PromptProgress,
    Sampling,
    Timings,
    is_instruct_name,
    split_sentinels,
)
from cg.engine.local.kvcache import KvCache
from cg.errors import ModelFileError, ModelNotFoundError, PromptTooLongError
from cg.models import special_ids
from cg_core import interrupts, llama_log

if TYPE_CHECKING:
    import numpy as np
    from llama_cpp import Llama

    from cg.engine.local.prompt_cache import PromptCache

_GGUF_MAGIC = b"GGUF"
# llama.cpp's physical batch. Prompt reuse resumes only at its multiples (see reuse.py); on the CPU
# 128 evaluates prompts as fast as the default 512 (measured on 2B and 270M models) and loses at
# most 127 tokens of a reusable prefix instead of 511. A GPU wants bigger batches.
UBATCH = 128
GPU_UBATCH = 512
# Prompt tokens evaluated by default: on the CPU the prompt is the whole cost (about 75 tokens/s at
# codegemma-2b's size on 2 cores), and the code nearest the cursor says the most.
CPU_WINDOW = 2048
# llama.cpp rounds every context up to a multiple of this (llama-context.cpp pads n_ctx), while
# llama-cpp-python sizes its token and logit arrays by the number asked: a --ctx off the step made
# a bigger context than those arrays, and decoding failed on a numpy broadcast.
CTX_STEP = 256


def context_size(asked: int) -> int:
    """The context llama.cpp makes for `asked` tokens: asked, rounded up to CTX_STEP."""
    return -(-max(asked, 1) // CTX_STEP) * CTX_STEP


@dataclass(frozen=True)
class LocalEngine:
    """A loaded GGUF. Engines made from one load (factory.py gives each its prompt cache) share
    the model and its KV cache."""

    llm: Llama
    path: Path
    info: EngineInfo
    load_ms: float
    kv: KvCache
    protected: dict[int, str]  # sentinel id -> its piece: what user text must never tokenize into
    gpu_layers: int = 0  # layers running on a GPU (-1: all); 0 on a CPU build, whatever was asked
    prompt_cache: PromptCache | None = None  # shared across processes, or None

    def with_prompt_cache(self, cache: PromptCache | None) -> LocalEngine:
        return dataclasses.replace(self, prompt_cache=cache)

    @property
    def state_version(self) -> str:
        """What the prompt cache's state files depend on besides the model file."""
        import llama_cpp

        return str(llama_cpp.__version__)

    def tokenize_text(self, text: str) -> list[int]:
        """User text, special-token parsing off: sentinel text in code stays text. llama.cpp
        matches USER_DEFINED tokens even with special parsing off, hence split_sentinels."""
        return split_sentinels(text, self._tokenize, self.protected)

    def _tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False) if text else []

    def generate(self, prompt: Sequence[int], *, max_tokens: int, sampling: Sampling,
                 logit_bias: dict[int, float] | None, logits_processor: LogitsProcessor | None,
                 timings: Timings, on_prompt: PromptProgress | None, exact: bool) -> Generator[Piece, None, None]:
        """llama-cpp-python's generate() after the KV cache was prepared: it sees the reused part
        and evaluates the rest of the prompt itself."""
        import llama_cpp

        self.llm.set_seed(sampling.seed)
        self.kv.prepare(prompt, timings, on_prompt, self.prompt_cache, exact=exact)
        chain = [p for p in (logit_bias_processor(logit_bias) if logit_bias else None, logits_processor) if p]
        gen = self.llm.generate(list(prompt), temp=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p,
                                min_p=sampling.min_p, repeat_penalty=sampling.repeat_penalty,
                                logits_processor=llama_cpp.LogitsProcessorList(chain) if chain else None)
        try:
            for token in gen:
                interrupts.check()  # a signal llama.cpp's log callback noted during the decode
                yield Piece((token,), self.llm.detokenize([token], special=False))
        finally:
            gen.close()
            self.kv.finish(prompt, timings, self.prompt_cache)


def check_gguf_file(path: Path) -> None:
    """Fail early, with a clear message, on a path that is not a GGUF file."""
    if not path.exists():
        raise ModelNotFoundError(f"model not found: {path}")
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is not a file")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise ModelFileError(f"cannot read {path}: {exc.strerror or exc}", "Check the file's permissions.") from None
    if magic != _GGUF_MAGIC:
        raise ModelFileError(f"{path} is not a GGUF file",
                             "cg runs .gguf models; convert a checkpoint with `cg quantize`.")


def load(path: Path | str, *, n_ctx: int = 4096, n_threads: int | None = None, seed: int = 0, verbose: bool = False,
         recorded_ids: dict[str, int] | None = None, gpu_layers: int | None = None, swa_full: bool = True
         ) -> LocalEngine:
    """Load a GGUF. gpu_layers: layers to offload (-1 all); None: all where llama.cpp was built
    with a GPU backend (Metal, CUDA, Vulkan...), else none (llama-cpp-python's own default is 0).
    swa_full: a full-size cache for sliding-window layers (Gemma 2/3), without which llama.cpp
    drops the cells a window has passed, so a reused prefix would lack them and cells cannot be
    moved; the window itself still applies. It costs memory only on such models."""
    path = Path(path)
    check_gguf_file(path)
    asked, n_ctx = n_ctx, context_size(n_ctx)  # asked as made: every array and budget uses what llama.cpp has
    threads = n_threads or os.cpu_count() or 1
    start = time.perf_counter()
    with llama_log.capture(verbose) as log:
        import llama_cpp

        layers = gpu_layers if gpu_layers is not None else default_gpu_layers()
        # A CPU build takes the number and runs every layer on the CPU all the same.
        offloaded = bool(layers) and bool(llama_cpp.llama_supports_gpu_offload())
        try:
            llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                                  n_ubatch=GPU_UBATCH if offloaded else UBATCH, n_gpu_layers=layers, seed=seed,
                                  verbose=verbose, swa_full=swa_full)
            _with_parking(llm, verbose)
        except (ValueError, RuntimeError) as exc:
            reason = log.last_error() or str(exc)
            if "context" in str(exc).lower():  # the model loaded; its context (--ctx) could not be made
                raise PromptTooLongError(f"cannot make a {asked}-token context for {path.name}: {reason}",
                                         "Lower --ctx (CodeGemma was trained for 8192 tokens).") from None
            raise ModelFileError(f"cannot load {path}: {reason}",
                                 "The file may be truncated or corrupt; download or convert it again.") from None
    load_ms = (time.perf_counter() - start) * 1000
    made = int(llm.n_ctx())
    if made != n_ctx:  # a llama.cpp that rounds otherwise: say so, not a numpy error mid-decode
        llm.close()
        raise PromptTooLongError(f"llama.cpp made a {made}-token context for the {n_ctx} asked",
                                 f"Pass --ctx {made}.")
    info = _describe(llm, path, recorded_ids or {}, offloaded)
    protected = {token: llm._model.token_get_text(token) for token in info.special.sentinel_ids()}
    return LocalEngine(llm, path, info, load_ms, KvCache(llm), protected, gpu_layers=layers if offloaded else 0)


def _with_parking(llm: Llama, verbose: bool) -> None:
    """The context again, with a second sequence sharing the one cache (kvcache.py parks moved
    cells there). llama-cpp-python's Llama takes no sequence count for a completion model."""
    import contextlib

    from llama_cpp import _internals

    llm._ctx.close()  # type: ignore[no-untyped-call]
    llm.context_params.n_seq_max = 2
    llm.context_params.kv_unified = True  # both sequences in one cache of n_ctx cells, not half each
    llm._ctx = llm._stack.enter_context(contextlib.closing(
        _internals.LlamaContext(model=llm._model, params=llm.context_params, verbose=verbose)))


def _describe(llm: Llama, path: Path, recorded: dict[str, int], offloaded: bool) -> EngineInfo:
    meta = llm.metadata

    def from_metadata(key: str) -> int | None:
        try:
            return int(meta[key]) if key in meta else None
        except ValueError:
            return None

    special, _ = special_ids.of_gguf(path, recorded, frozenset(_eog_ids(llm)), metadata=from_metadata)
    n_ctx = int(llm.n_ctx())
    chat = bool(meta.get("tokenizer.chat_template")) or is_instruct_name(path.name)
    return EngineInfo(name=str(path), label=path.name, server=None, n_ctx=n_ctx, n_vocab=int(llm.n_vocab()),
                      special=special, bos=special.bos if special.bos is not None else int(llm.token_bos()),
                      chat=chat, default_window=n_ctx if offloaded else min(CPU_WINDOW, n_ctx))


def default_gpu_layers() -> int:
    """-1 (every layer) when llama.cpp was built with a GPU backend, else 0."""
    import llama_cpp

    return -1 if llama_cpp.llama_supports_gpu_offload() else 0


def _eog_ids(llm: Llama) -> set[int]:
    """Tokens llama.cpp itself treats as end-of-generation (checked over the special ids only)."""
    import llama_cpp

    vocab = llm._model.vocab
    candidates = {llm.token_eos(), llama_cpp.llama_vocab_eot(vocab)}
    return {t for t in candidates if t >= 0 and llama_cpp.llama_vocab_is_eog(vocab, t)}


def logit_bias_processor(bias: dict[int, float]) -> LogitsProcessor:
    """A llama-cpp-python logits processor adding a fixed bias per token id."""
    ids = list(bias)
    values = [bias[i] for i in ids]

    def process(_input_ids: np.ndarray, logits: np.ndarray) -> np.ndarray:
        logits[ids] += values
        return logits

    return process
