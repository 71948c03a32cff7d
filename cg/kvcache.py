"""The local engine's KV cache: what a new prompt reuses of what is already computed, in this
process or in the on-disk prompt cache, and the prompt evaluated in llama.cpp's physical batches.

What to reuse is decided in reuse.py (pure functions on token lists); this module carries it
out on the llama.cpp context: removing cells, loading and saving sequence states. Invariant
between two calls: sequence 0 holds exactly the last prompt (generated tokens are dropped), and
llm.input_ids[:llm.n_tokens] says which tokens.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from . import reuse
from .engine import PromptProgress, Timings

if TYPE_CHECKING:
    import numpy as np
    from llama_cpp import Llama

    from .prompt_cache import PromptCache


class KvCache:
    """The KV cache of one loaded model (shared by every engine made from it)."""

    def __init__(self, llm: Llama):
        self.llm = llm

    @property
    def ubatch(self) -> int:
        return max(1, int(self.llm.context_params.n_ubatch))  # n_ubatch, or n_batch when smaller

    @property
    def held(self) -> np.ndarray:
        """The tokens whose KV sequence 0 holds, in order (a view)."""
        return self.llm.input_ids[: self.llm.n_tokens]

    def prepare(self, prompt: Sequence[int], timings: Timings, on_prompt: PromptProgress | None,
                cache: PromptCache | None) -> None:
        """Reuse what can be reused, then evaluate the prompt up to its last physical batch
        (generate() evaluates the rest and samples)."""
        timings.cached_tokens = self._reuse(prompt, timings, cache)
        timings.evaluated_tokens = len(prompt) - timings.cached_tokens
        timings.reuse = "prefix" if timings.cached_tokens else "none"
        self._prefill(prompt, timings.cached_tokens, on_prompt)

    def finish(self, prompt: Sequence[int], timings: Timings, cache: PromptCache | None) -> None:
        """After generation: keep only the prompt's KV, and offer it to the disk cache."""
        self._forget_generated(len(prompt))
        from .prompt_cache import MIN_GAIN, MIN_TOKENS

        if cache is not None and len(prompt) >= MIN_TOKENS and len(prompt) - timings.cached_tokens >= MIN_GAIN:
            cache.save(self.held, self._save_state)

    def _reuse(self, prompt: Sequence[int], timings: Timings, cache: PromptCache | None) -> int:
        """Prompt tokens whose KV is already there: from the last call in this process, or
        loaded from the on-disk prompt cache when that saves more."""
        from .prompt_cache import MIN_GAIN

        in_memory = reuse.exact_prefix(self.held, prompt, self.ubatch)
        reused = in_memory
        if cache is not None and len(prompt) - in_memory >= MIN_GAIN:
            t0 = time.perf_counter()
            best = cache.best(prompt)
            if best is not None and reuse.aligned(best[1], len(prompt), self.ubatch) >= in_memory + MIN_GAIN:
                loaded = self._load_state(best[0])
                if loaded:
                    cache.touch(best[0])
                reused = reuse.exact_prefix(self.held, prompt, self.ubatch) if loaded else 0
            timings.disk_cache_ms = (time.perf_counter() - t0) * 1000
        # llama-cpp-python reuses the longest prefix of what it holds: hold just the reused part.
        self.llm.n_tokens = min(self.llm.n_tokens, reused)
        return reused

    def _prefill(self, prompt: Sequence[int], start: int, on_prompt: PromptProgress | None) -> None:
        """Evaluate the prompt up to its last physical batch, one batch per call, reporting
        progress. The batches are the ones one call would make (they start at `start`, a
        multiple of n_ubatch), so the logits are the same bit for bit; generate() then sees
        this part in the KV cache and evaluates the last batch itself."""
        step = self.ubatch
        end = reuse.aligned(len(prompt), len(prompt), step)
        for at in range(start, end, step):
            self.llm.eval(list(prompt[at:at + step]))
            if on_prompt is not None:
                on_prompt(at + step, len(prompt))

    def _forget_generated(self, prompt_len: int) -> None:
        """Keep only the prompt's KV. Generated tokens were evaluated one by one, and reusing
        their KV for a later prompt (evaluated in batches) changes its floating-point results
        enough to flip a greedy choice now and then: cg's output must not depend on what ran
        before it, in this process or in the prompt cache."""
        if self.llm.n_tokens > prompt_len:
            import llama_cpp

            llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(self.llm._ctx.ctx), -1, prompt_len, -1)
            self.llm.n_tokens = prompt_len

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

        capacity = int(self.llm.n_ctx())
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
