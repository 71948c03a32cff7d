"""The local engine: llama-cpp-python in this process, on the CPU or with layers on a GPU.

The only module that runs llama.cpp for inference and reaches into llama-cpp-python's internals
(the KV cache, state files). Everything here works on token ids. Prompt layouts live in fim.py,
text clean-up in postprocess.py.
"""

from __future__ import annotations

import codecs
import ctypes
import os
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from quantize import llama_log
from quantize.tokens import SENTINELS

from .engine import (
    LogitsProcessor,
    PromptProgress,
    Sampling,
    SpecialIds,
    Timings,
    TokenEvent,
    check_token_ids,
    find_special_ids,
    is_instruct_name,
    split_sentinels,
)
from .errors import ModelFileError, ModelNotFoundError

if TYPE_CHECKING:
    import numpy as np
    from llama_cpp import Llama

    from .prompt_cache import PromptCache

_GGUF_MAGIC = b"GGUF"
# llama.cpp's physical batch. Prompt reuse resumes only at its multiples (see LocalEngine._aligned);
# on the CPU 128 evaluates prompts as fast as the default 512 (measured on 2B and 270M models) and
# loses at most 127 tokens of a reusable prefix instead of 511. A GPU wants bigger batches.
UBATCH = 128
GPU_UBATCH = 512
# Prompt tokens evaluated by default: on the CPU the prompt is the whole cost (about 28 tokens/s at
# codegemma-2b's size on 2 cores), and the code nearest the cursor says the most.
CPU_WINDOW = 2048


@dataclass
class LocalEngine:
    llm: Llama
    path: Path
    special: SpecialIds
    load_ms: float
    chat_template: str | None = None
    _protected: dict[int, str] = field(default_factory=dict)
    prompt_cache: PromptCache | None = None  # shared across processes, or None
    gpu_layers: int = 0  # layers running on a GPU (-1: all); 0 on a CPU build, whatever was asked

    @property
    def offloaded(self) -> bool:
        return self.gpu_layers != 0

    @property
    def default_window(self) -> int:
        """Prompt tokens evaluated when the caller does not say: see CPU_WINDOW."""
        return self.n_ctx if self.offloaded else min(CPU_WINDOW, self.n_ctx)

    @property
    def n_ctx(self) -> int:
        return int(self.llm.n_ctx())

    @property
    def n_vocab(self) -> int:
        return int(self.llm.n_vocab())

    @property
    def is_chat(self) -> bool:
        return bool(self.chat_template) or is_instruct_name(self.path.name)

    @property
    def name(self) -> str:
        return str(self.path)

    @property
    def label(self) -> str:
        return self.path.name

    @property
    def server(self) -> str | None:
        return None

    @property
    def bos(self) -> int:
        return self.special.bos if self.special.bos is not None else int(self.llm.token_bos())

    @property
    def state_version(self) -> str:
        """What the prompt cache's state files depend on besides the model file."""
        import llama_cpp

        return str(llama_cpp.__version__)

    def tokenize_text(self, text: str) -> list[int]:
        """User text, special-token parsing off: sentinel text in code stays text. llama.cpp
        matches USER_DEFINED tokens even with special parsing off, hence split_sentinels."""
        return split_sentinels(text, self._tokenize, self._protected)

    def _tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False) if text else []

    def stream(
        self,
        prompt: Sequence[int],
        *,
        max_tokens: int,
        sampling: Sampling = Sampling(),
        logit_bias: dict[int, float] | None = None,
        logits_processor: LogitsProcessor | None = None,
        timings: Timings | None = None,
        on_prompt: PromptProgress | None = None,
    ) -> Generator[TokenEvent, None, None]:
        """Decode up to max_tokens after prompt; the last event is a stop token or the limit.

        llama-cpp-python's generate() keeps the KV cache of the previous call and only evaluates
        the part of the prompt that differs, so repeated prompts with a shared prefix are cheap.
        """
        if logit_bias:
            check_token_ids(list(logit_bias), self.n_vocab, "--logit-bias")
        stops = self.special.stop_ids
        self.llm.set_seed(sampling.seed)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        timings = timings if timings is not None else Timings()
        start = time.perf_counter()
        timings.cached_tokens = self._reuse(prompt, timings)
        self._prefill(prompt, timings.cached_tokens, on_prompt)
        first = None
        import llama_cpp

        chain = [p for p in (logit_bias_processor(logit_bias) if logit_bias else None, logits_processor) if p]
        processors = llama_cpp.LogitsProcessorList(chain) if chain else None
        gen = self.llm.generate(
            list(prompt),
            temp=sampling.temperature,
            top_k=sampling.top_k,
            top_p=sampling.top_p,
            min_p=sampling.min_p,
            repeat_penalty=sampling.repeat_penalty,
            logits_processor=processors,
        )
        try:
            for n, token in enumerate(gen, start=1):
                now = time.perf_counter()
                if first is None:
                    first = now
                    timings.prompt_ms = (now - start) * 1000
                timings.generation_ms = (now - first) * 1000
                if token in stops:
                    yield TokenEvent(token, "", True)
                    return
                piece = self.llm.detokenize([token], special=False)
                yield TokenEvent(token, decoder.decode(piece), False)
                if n >= max_tokens:
                    return
        finally:
            gen.close()
            self._forget_generated(len(prompt))
            self._remember(len(prompt), timings.cached_tokens)

    def _forget_generated(self, prompt_len: int) -> None:
        """Keep only the prompt's KV. Generated tokens were evaluated one by one, and reusing
        their KV for a later prompt (evaluated in batches) changes its floating-point results
        enough to flip a greedy choice now and then: cg's output must not depend on what ran
        before it, in this process or in the prompt cache."""
        if self.llm.n_tokens > prompt_len:
            import llama_cpp

            llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(self.llm._ctx.ctx), -1, prompt_len, -1)
            self.llm.n_tokens = prompt_len

    def _reuse(self, prompt: Sequence[int], timings: Timings) -> int:
        """Prompt tokens whose KV is already there: from the last call in this process, or
        loaded from the on-disk prompt cache when that saves more."""
        from .prompt_cache import MIN_GAIN, common_prefix

        in_memory = self._aligned(common_prefix(self.llm.input_ids[: self.llm.n_tokens], prompt), len(prompt))
        reused = in_memory
        if self.prompt_cache is not None and len(prompt) - in_memory >= MIN_GAIN:
            t0 = time.perf_counter()
            best = self.prompt_cache.best(prompt)
            if best is not None and self._aligned(best[1], len(prompt)) >= in_memory + MIN_GAIN:
                loaded = self._load_state(best[0])
                if loaded:
                    self.prompt_cache.touch(best[0])
                reused = common_prefix(self.llm.input_ids[: self.llm.n_tokens], prompt) if loaded else 0
                reused = self._aligned(reused, len(prompt))
            timings.disk_cache_ms = (time.perf_counter() - t0) * 1000
        # llama-cpp-python reuses the longest prefix of what it holds: hold just the aligned part.
        self.llm.n_tokens = min(self.llm.n_tokens, reused)
        return reused

    def _prefill(self, prompt: Sequence[int], start: int, on_prompt: PromptProgress | None) -> None:
        """Evaluate the prompt up to its last physical batch, one batch per call, reporting
        progress. The batches are the ones one call would make (they start at `start`, a
        multiple of n_ubatch), so the logits are the same bit for bit; generate() then sees
        this part in the KV cache and evaluates the last batch itself."""
        step = self._ubatch()
        end = self._aligned(len(prompt), len(prompt))
        for at in range(start, end, step):
            self.llm.eval(list(prompt[at:at + step]))
            if on_prompt is not None:
                on_prompt(at + step, len(prompt))

    def _ubatch(self) -> int:
        return max(1, int(self.llm.context_params.n_ubatch))  # n_ubatch, or n_batch when smaller

    def _aligned(self, common: int, prompt_len: int) -> int:
        """Reuse whole batches only. llama.cpp evaluates a prompt in chunks of UBATCH tokens from
        position 0; resuming at a chunk boundary makes the rest evaluate in exactly the chunks a
        fresh run uses, so the logits, and the greedy output, are bit-for-bit those of a run without reuse
        (a split elsewhere changes float rounding enough to flip a close choice). The last prompt
        token is always evaluated, as it is the one whose logits are sampled."""
        step = self._ubatch()
        return (min(common, prompt_len - 1) // step) * step

    def _remember(self, prompt_len: int, reused: int) -> None:
        from .prompt_cache import MIN_GAIN, MIN_TOKENS

        if self.prompt_cache is not None and prompt_len >= MIN_TOKENS and prompt_len - reused >= MIN_GAIN:
            self.prompt_cache.save(self.llm.input_ids[: self.llm.n_tokens], self._save_state)

    def _save_state(self, path: Path) -> bool:
        """Sequence 0 (its KV cache and tokens) to llama.cpp's state file at path."""
        import llama_cpp

        n = self.llm.n_tokens
        tokens = (llama_cpp.llama_token * n)(*self.llm.input_ids[:n].tolist())
        return bool(llama_cpp.llama_state_seq_save_file(self.llm._ctx.ctx, str(path).encode(), 0, tokens, n))

    def _load_state(self, path: Path) -> int:
        """Load a state file into sequence 0; return the tokens now in the KV cache (0: failed)."""
        import llama_cpp
        import numpy as np

        capacity = self.n_ctx
        tokens = (llama_cpp.llama_token * capacity)()
        count = ctypes.c_size_t(0)
        ctx = self.llm._ctx.ctx
        memory = llama_cpp.llama_get_memory(ctx)
        llama_cpp.llama_memory_seq_rm(memory, 0, -1, -1)
        self.llm.n_tokens = 0
        read = llama_cpp.llama_state_seq_load_file(ctx, str(path).encode(), 0, tokens, capacity, ctypes.byref(count))
        if not read:
            llama_cpp.llama_memory_seq_rm(memory, 0, -1, -1)
            return 0
        n = int(count.value)
        self.llm.input_ids[:n] = np.ctypeslib.as_array(tokens)[:n]
        self.llm.n_tokens = n
        self.llm._requires_eval = True  # logits must come from a live decode
        return n


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


def load(
    path: Path | str,
    *,
    n_ctx: int = 4096,
    n_threads: int | None = None,
    seed: int = 0,
    verbose: bool = False,
    recorded_ids: dict[str, int] | None = None,
    gpu_layers: int | None = None,
) -> LocalEngine:
    """Load a GGUF. gpu_layers: layers to offload (-1 all); None: all where llama.cpp was built
    with a GPU backend (Metal, CUDA, Vulkan...), else none (llama-cpp-python's own default is 0)."""
    path = Path(path)
    check_gguf_file(path)
    threads = n_threads or os.cpu_count() or 1
    start = time.perf_counter()
    with llama_log.capture(verbose) as log:
        import llama_cpp

        layers = gpu_layers if gpu_layers is not None else default_gpu_layers()
        # A CPU build takes the number and runs every layer on the CPU all the same.
        offloaded = bool(layers) and bool(llama_cpp.llama_supports_gpu_offload())
        try:
            llm = llama_cpp.Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                n_threads=threads,
                n_threads_batch=threads,
                n_ubatch=GPU_UBATCH if offloaded else UBATCH,
                n_gpu_layers=layers,
                seed=seed,
                verbose=verbose,
            )
        except (ValueError, RuntimeError) as exc:
            reason = log.last_error() or str(exc)
            raise ModelFileError(f"cannot load {path}: {reason}",
                                 "The file may be truncated or corrupt; download or convert it again.") from None
    load_ms = (time.perf_counter() - start) * 1000
    special = _special_ids(llm, recorded_ids or {})
    protected = dict(_sentinel_texts(llm, special))
    return LocalEngine(llm, path, special, load_ms, llm.metadata.get("tokenizer.chat_template"), protected,
                  gpu_layers=layers if offloaded else 0)


def default_gpu_layers() -> int:
    """-1 (every layer) when llama.cpp was built with a GPU backend, else 0."""
    import llama_cpp

    return -1 if llama_cpp.llama_supports_gpu_offload() else 0


def _special_ids(llm: Llama, recorded: dict[str, int]) -> SpecialIds:
    meta = llm.metadata

    def from_metadata(key: str) -> int | None:
        return int(meta[key]) if key in meta else None

    return find_special_ids(from_metadata, lambda text: _lookup_text(llm, text), recorded,
                            frozenset(_eog_ids(llm)))


def _lookup_text(llm: Llama, text: str) -> int | None:
    ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
    if len(ids) == 1 and llm._model.token_get_text(ids[0]) == text:
        return ids[0]
    return None


def _eog_ids(llm: Llama) -> set[int]:
    """Tokens llama.cpp itself treats as end-of-generation (checked over the special ids only)."""
    import llama_cpp

    vocab = llm._model.vocab
    candidates = {llm.token_eos(), llama_cpp.llama_vocab_eot(vocab)}
    return {t for t in candidates if t >= 0 and llama_cpp.llama_vocab_is_eog(vocab, t)}


def _sentinel_texts(llm: Llama, special: SpecialIds) -> dict[int, str]:
    out = {}
    for sentinel in SENTINELS:
        token = getattr(special, sentinel.name)
        if token is not None:
            out[token] = llm._model.token_get_text(token)
    return out


def logit_bias_processor(bias: dict[int, float]) -> LogitsProcessor:
    """A llama-cpp-python logits processor adding a fixed bias per token id."""
    ids = list(bias)
    values = [bias[i] for i in ids]

    def process(_input_ids: np.ndarray, logits: np.ndarray) -> np.ndarray:
        logits[ids] += values
        return logits

    return process
