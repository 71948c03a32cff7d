"""The local engine: llama.cpp in this process, on the CPU or with layers on a GPU.

It drives llama.cpp itself through the C functions llama-cpp-python binds (context.py: the model,
a context whose sequences share one KV memory; sampler.py: the sampler chain), never a private
attribute of llama-cpp-python. Everything here works on token ids; what a new prompt reuses of the
KV cache is kvcache.py's, several prompts decoded together batched.py's, prompt layouts cg/prompt/'s.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cg import settings
from cg.engine.local.context import Context, ContextError, LoadError, Model, built_with_amx
from cg.engine.local.kvcache import Cancelled, KvCache
from cg.engine.local.sampler import Sampler
from cg.engine.protocol import (
    EngineInfo,
    LogitsProcessor,
    Piece,
    PromptProgress,
    Sampling,
    Timings,
    is_instruct_name,
    split_sentinels,
)
from cg.errors import ModelFileError, ModelNotFoundError, PromptTooLongError
from cg.models import special_ids
from cg.settings import CPU_WINDOW, CTX_STEP, DEFAULT_CTX
from cg_core import interrupts, llama_log

if TYPE_CHECKING:
    from cg.engine.local.batched import Job
    from cg.engine.local.prompt_cache import PromptCache

_GGUF_MAGIC = b"GGUF"
# llama.cpp's physical batch. Prompt reuse resumes only at its multiples (see reuse.py); on the CPU
# 128 evaluates prompts as fast as the default 512 (measured on 2B and 270M models) and loses at
# most 127 tokens of a reusable prefix instead of 511. A GPU wants bigger batches.
UBATCH = 128
GPU_UBATCH = 512
# Sequences of one context: the main one, the parking place of a splice, and the others of
# generate_many (several prompts decoded together). They share the context's n_ctx cells.
N_SEQ = 8


def context_size(asked: int) -> int:
    """The context llama.cpp makes for `asked` tokens: asked, rounded up to CTX_STEP."""
    return -(-max(asked, 1) // CTX_STEP) * CTX_STEP


@dataclass(frozen=True)
class LocalEngine:
    """A loaded GGUF. Engines made from one load (factory.py gives each its prompt cache) share
    the model, its context and its KV cache. `llm` is the context (context.Context): close() frees it."""

    llm: Context
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
        return self.llm.model.tokenize(text.encode("utf-8"), add_bos=False, special=False) if text else []

    def generate(self, prompt: Sequence[int], *, max_tokens: int, sampling: Sampling,
                 logit_bias: dict[int, float] | None, logits_processor: LogitsProcessor | None,
                 timings: Timings, on_prompt: PromptProgress | None, exact: bool,
                 cancel: Callable[[], bool] | None = None) -> Generator[Piece, None, None]:
        """Up to max_tokens tokens after prompt, in the main sequence. cancel (optional) is asked
        between two decodes, prompt chunks included: true ends the generation at once, the cells
        decoded so far kept for the next prompt."""
        if not prompt:
            raise ValueError("an empty prompt")
        main, model = self.kv.main, self.llm.model
        with Sampler(self.llm, sampling, logit_bias, logits_processor) as sampler:
            try:
                row = self.kv.prepare(prompt, timings, on_prompt, self.prompt_cache, exact=exact, cancel=cancel)
            except Cancelled:
                return
            try:
                for produced in range(max_tokens):
                    token = sampler.sample(row, main.tokens)
                    yield Piece((token,), model.detokenize([token]))
                    if produced + 1 >= max_tokens or (cancel is not None and cancel()):
                        break
                    row = self.llm.step([(main, token)])[0]
                    interrupts.check()  # a signal llama.cpp's log callback noted during the decode
            finally:
                self.kv.finish(prompt, timings, self.prompt_cache)

    def generate_many(self, jobs: Sequence[Job], *, exact: bool = True,
                      stop_ids: frozenset[int] | None = None) -> Generator[tuple[int, Piece], None, None]:
        """Several prompts decoded together (batched.py): (job index, Piece) as each step
        gives them; a job ends on a stop id (its piece yielded), its max_tokens, or its cancel."""
        from cg.engine.local import batched

        return batched.generate_many(self, jobs, exact=exact, stop_ids=stop_ids)


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


def repack_weights() -> bool:
    """Whether weights load into llama.cpp's extra buffer types (repacked for AMX, AVX2 and
    others): yes, except where this build has AMX kernels and CG_AMX is not on. They crash in
    llama_decode on some machines (llama.cpp #20824, open, and #11115; this project's CI: SIGSEGV
    in both compute threads on an 800-token prompt of the 270M), and the extra buffer types are
    one switch in llama.cpp (llama-server's --no-repack)."""
    return settings.amx() or not built_with_amx()


def load(path: Path | str, *, n_ctx: int = DEFAULT_CTX, n_threads: int | None = None, seed: int = 0,
         verbose: bool = False, recorded_ids: dict[str, int] | None = None, gpu_layers: int | None = None,
         swa_full: bool = True, use_extra_bufts: bool | None = None, n_seq: int | None = None) -> LocalEngine:
    """Load a GGUF. gpu_layers: layers to offload (-1 all); None: all where llama.cpp was built
    with a GPU backend (Metal, CUDA, Vulkan...), else none. swa_full: a full-size cache for
    sliding-window layers (Gemma 2/3), without which llama.cpp drops the cells a window has
    passed, so a reused prefix would lack them and cells cannot be moved; the window itself still
    applies. It costs memory only on such models. use_extra_bufts: llama.cpp's extra weight buffer
    types (repacked weights for AMX and others); None: repack_weights(). n_seq: sequences in the
    context (at least 2; None: N_SEQ, or 2 without swa_full, where llama.cpp sizes the
    sliding-window cache by the sequences: window x n_seq). seed: unused (each generation seeds
    its own sampler from its Sampling); kept for callers."""
    del seed
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
            repack = repack_weights() if use_extra_bufts is None else use_extra_bufts
            model = Model(path, gpu_layers=layers, use_extra_bufts=repack)
        except LoadError as exc:
            raise ModelFileError(f"cannot load {path}: {log.last_error() or exc}",
                                 "The file may be truncated or corrupt; download or convert it again.") from None
        try:
            llm = Context(model, n_ctx=n_ctx, n_threads=threads, n_ubatch=GPU_UBATCH if offloaded else UBATCH,
                          n_seq_max=max(2, n_seq or (N_SEQ if swa_full else 2)), swa_full=swa_full)
        except ContextError as exc:
            model.close()
            raise PromptTooLongError(f"cannot make a {asked}-token context for {path.name}: {log.last_error() or exc}",
                                     "Lower --ctx (CodeGemma was trained for 8192 tokens).") from None
    load_ms = (time.perf_counter() - start) * 1000
    made = llm.n_ctx()
    if made != n_ctx:  # a llama.cpp that rounds otherwise: say so
        llm.close()
        raise PromptTooLongError(f"llama.cpp made a {made}-token context for the {n_ctx} asked",
                                 f"Pass --ctx {made}.")
    info = _describe(llm, path, recorded_ids or {}, offloaded)
    protected = {token: model.text(token) for token in info.special.sentinel_ids()}
    return LocalEngine(llm, path, info, load_ms, KvCache(llm), protected, gpu_layers=layers if offloaded else 0)


def _describe(llm: Context, path: Path, recorded: dict[str, int], offloaded: bool) -> EngineInfo:
    meta = llm.model.metadata()

    def from_metadata(key: str) -> int | None:
        try:
            return int(meta[key]) if key in meta else None
        except ValueError:
            return None

    special, _ = special_ids.of_gguf(path, recorded, frozenset(_eog_ids(llm.model)), metadata=from_metadata)
    n_ctx = llm.n_ctx()
    chat = bool(meta.get("tokenizer.chat_template")) or is_instruct_name(path.name)
    return EngineInfo(name=str(path), label=path.name, server=None, n_ctx=n_ctx, n_vocab=llm.n_vocab(),
                      special=special, bos=special.bos if special.bos is not None else llm.model.bos(),
                      chat=chat, default_window=n_ctx if offloaded else min(CPU_WINDOW, n_ctx))


def default_gpu_layers() -> int:
    """-1 (every layer) when llama.cpp was built with a GPU backend, else 0."""
    import llama_cpp

    return -1 if llama_cpp.llama_supports_gpu_offload() else 0


def _eog_ids(model: Model) -> set[int]:
    """Tokens llama.cpp itself treats as end-of-generation (checked over the special ids only)."""
    return {t for t in (model.eos(), model.eot()) if t >= 0 and model.is_eog(t)}
