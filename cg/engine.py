"""The only module that runs llama.cpp for inference: load a GGUF, tokenize, stream tokens.

Everything here works on token ids. Prompt layouts live in fim.py, text clean-up in
postprocess.py.
"""

from __future__ import annotations

import codecs
import ctypes
import os
import re
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

from quantize import llama_log
from quantize.tokens import BY_NAME, SENTINELS, metadata_keys

from .errors import ModelFileError, ModelNotFoundError, UsageError

if TYPE_CHECKING:
    import numpy as np
    from llama_cpp import Llama

    from .prompt_cache import PromptCache

# logits_processor(input_ids, logits) -> logits, as llama-cpp-python calls it
LogitsProcessor = Callable[["np.ndarray", "np.ndarray"], "np.ndarray"]
_GGUF_MAGIC = b"GGUF"
# An instruction-tuned model's file name: "-it" as a whole word (codegemma-7b-it-q4_k_m.gguf,
# gemma-2-9b-it.Q4.gguf), not inside another one (model-iter, item).
_INSTRUCT_NAME = re.compile(r"(?:^|[-_.])it(?:$|[-_.])", re.IGNORECASE)
# llama.cpp's physical batch. Prompt reuse resumes only at its multiples (see Engine._aligned);
# on the CPU 128 evaluates prompts as fast as the default 512 (measured on 2B and 270M models) and
# loses at most 127 tokens of a reusable prefix instead of 511. A GPU wants bigger batches.
UBATCH = 128
GPU_UBATCH = 512
# Prompt tokens evaluated by default: on the CPU the prompt is the whole cost (about 28 tokens/s at
# codegemma-2b's size on 2 cores), and the code nearest the cursor says the most.
CPU_WINDOW = 2048
PromptProgress = Callable[[int, int], None]  # (tokens evaluated, prompt tokens)


@dataclass(frozen=True)
class SpecialIds:
    """Ids of the special tokens (quantize/tokens.py names them) in the loaded vocabulary."""

    bos: int | None = None
    eos: int | None = None
    fim_pre: int | None = None
    fim_suf: int | None = None
    fim_mid: int | None = None
    fim_sep: int | None = None
    start_turn: int | None = None
    eot: int | None = None
    extra_stops: frozenset[int] = frozenset()

    @property
    def has_fim(self) -> bool:
        return None not in (self.fim_pre, self.fim_suf, self.fim_mid)

    def fim_triple(self) -> tuple[int, int, int]:
        """(prefix, suffix, middle) sentinel ids; only for a model that has them."""
        if self.fim_pre is None or self.fim_suf is None or self.fim_mid is None:
            raise ValueError("the model has no FIM tokens")
        return self.fim_pre, self.fim_suf, self.fim_mid

    @property
    def stop_ids(self) -> frozenset[int]:
        """<eos>, every FIM sentinel, <|file_separator|> and <end_of_turn>, marked EOG or not."""
        ids = {getattr(self, t.name) for t in BY_NAME.values() if t.stop}
        return frozenset(i for i in ids if i is not None) | self.extra_stops

    def named(self) -> dict[str, int]:
        """The ids found, by name (what cg's store records)."""
        return {f.name: v for f in fields(self) if isinstance(v := getattr(self, f.name), int)}


@dataclass(frozen=True)
class Sampling:
    """Greedy by default (temperature 0); repeat penalty 1.0 as Google's GGUF README advises."""

    temperature: float = 0.0
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0


@dataclass(frozen=True)
class TokenEvent:
    token: int
    text: str  # decoded text of this token ('' for a control token or an incomplete UTF-8 byte)
    stop: bool  # the token is a stop id; its text is never part of the output


@dataclass
class Timings:
    load_ms: float = 0.0
    prompt_ms: float = 0.0
    generation_ms: float = 0.0
    cached_tokens: int = 0  # prompt tokens not evaluated: reused from memory or the prompt cache
    disk_cache_ms: float = 0.0  # time spent loading from the on-disk prompt cache


@dataclass
class Engine:
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
        return bool(self.chat_template) or bool(_INSTRUCT_NAME.search(self.path.name))

    @property
    def state_version(self) -> str:
        """What the prompt cache's state files depend on besides the model file."""
        import llama_cpp

        return str(llama_cpp.__version__)

    def tokenize_text(self, text: str) -> list[int]:
        """User text, special-token parsing off: sentinel text in code stays text."""
        ids = self._tokenize(text)
        if self._protected.keys().isdisjoint(ids):
            return ids
        # llama.cpp matches user-defined tokens even with special parsing off; a GGUF that marks
        # a sentinel user-defined would let file content inject it. Split the sentinel text so
        # only ordinary tokens can match.
        pattern = "(" + "|".join(re.escape(t) for t in set(self._protected.values())) + ")"
        out: list[int] = []
        for part in re.split(pattern, text):
            if part in self._protected.values():
                out += self._tokenize(part[:1]) + self._tokenize(part[1:])
            elif part:
                out += self._tokenize(part)
        return out

    def _tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False) if text else []

    def check_token_ids(self, ids: Sequence[int], what: str) -> None:
        """Refuse ids outside the vocabulary (a negative one would index from the end)."""
        bad = [i for i in ids if not 0 <= i < self.n_vocab]
        if bad:
            raise UsageError(f"{what}: token id {bad[0]} is not in the model's vocabulary (0..{self.n_vocab - 1})",
                             "Use an id the model has, e.g. 70 for <|file_separator|> in CodeGemma.")

    def stream(
        self,
        prompt: Sequence[int],
        *,
        max_tokens: int,
        sampling: Sampling = Sampling(),
        stop_ids: frozenset[int] | None = None,
        logits_processor: LogitsProcessor | None = None,
        timings: Timings | None = None,
        on_prompt: PromptProgress | None = None,
    ) -> Generator[TokenEvent, None, None]:
        """Decode up to max_tokens after prompt; the last event is a stop token or the limit.

        llama-cpp-python's generate() keeps the KV cache of the previous call and only evaluates
        the part of the prompt that differs, so repeated prompts with a shared prefix are cheap.
        """
        stops = self.special.stop_ids if stop_ids is None else stop_ids
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        timings = timings if timings is not None else Timings()
        start = time.perf_counter()
        timings.cached_tokens = self._reuse(prompt, timings)
        self._prefill(prompt, timings.cached_tokens, on_prompt)
        first = None
        import llama_cpp

        processors = llama_cpp.LogitsProcessorList([logits_processor]) if logits_processor else None
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
) -> Engine:
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
    return Engine(llm, path, special, load_ms, llm.metadata.get("tokenizer.chat_template"), protected,
                  gpu_layers=layers if offloaded else 0)


def default_gpu_layers() -> int:
    """-1 (every layer) when llama.cpp was built with a GPU backend, else 0."""
    import llama_cpp

    return -1 if llama_cpp.llama_supports_gpu_offload() else 0


def _special_ids(llm: Llama, recorded: dict[str, int]) -> SpecialIds:
    meta = llm.metadata
    found: dict[str, int] = {}
    for name in (f.name for f in fields(SpecialIds) if f.name in BY_NAME):
        for key in metadata_keys(BY_NAME[name]):
            if key in meta and int(meta[key]) >= 0:
                found[name] = int(meta[key])
                break
    for sentinel in SENTINELS:
        if sentinel.name not in found:
            token = _lookup_text(llm, sentinel.text)
            if token is not None:
                found[sentinel.name] = token
    # Ids recorded in cg's store (cg download) fill what the GGUF lacks.
    for name, token in recorded.items():
        if name in SpecialIds.__dataclass_fields__ and name not in found:
            found[name] = int(token)
    eog = _eog_ids(llm)
    return SpecialIds(**found, extra_stops=frozenset(eog))


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
