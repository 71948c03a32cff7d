"""The local engine's KV cache: what a new prompt reuses of what is already computed, in this
process or in the on-disk prompt cache, and the rest evaluated.

What to reuse is reuse.py's (pure functions on token lists); this module carries it out on the
llama.cpp context. Invariant between two calls: sequence 0 holds exactly the last prompt (the
generated tokens are dropped), llm.input_ids[:llm.n_tokens] says which tokens, and `exact_upto`
how many of the first of them hold what a fresh evaluation would (all of them, unless the last
prompt was spliced: then up to its first change). Exact reuse takes only those; a splice may move
any of them (cells already moved once carry their first context further: llama-server's
--cache-reuse does the same), and only an exact state goes to the disk cache.

Cutting a state to a prefix is exact only while it holds every position from 0: a sliding-window
cache that is not full-size (swa_full) drops the cells its window has passed, and so would a state
saved for one sequence (see Cells.state). Such a state is never cut for exact reuse, and never
saved (Cells.complete asks llama.cpp which positions sequence 0 holds).

A splice moves runs of cells to new positions while the tokens before them are evaluated. The
batch check of llama.cpp wants a sequence's new tokens to follow its last cell, so the runs wait
in sequence 1 (a parking place: the context has two sequences sharing one cache), are shifted to
their new positions there (llama_memory_seq_add; the keys' RoPE rotation is redone), and join
sequence 0 again just before the tokens after them are evaluated. A model whose cache cannot be
shifted (llama_memory_can_shift) reuses the exact prefix only.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cg.engine import PromptProgress, Timings
from cg.engine.local import reuse

if TYPE_CHECKING:
    import numpy as np
    from llama_cpp import Llama

    from cg.engine.local.prompt_cache import Entry, PromptCache

PARKING = 1  # the sequence moved runs wait in
_FAR = 1 << 24  # positions beyond any prompt: runs are moved there first, so no two ever overlap


@dataclass(frozen=True)
class Source:
    """What a plan reuses: the cells in memory, or a disk entry to load first."""

    tokens: np.ndarray
    exact: int  # how many of the first tokens hold what a fresh evaluation would
    entry: Entry | None = None


class Cells:
    """llama.cpp's KV memory of one context, by sequence: the few calls KvCache makes of it.
    Ranges are [start, end) positions; -1 means unbounded (or every sequence)."""

    def __init__(self, llm: Llama):
        import llama_cpp

        self._llama_cpp, self._llm = llama_cpp, llm
        self.can_shift = bool(llama_cpp.llama_memory_can_shift(self._memory))

    @property
    def _ctx(self) -> int:
        return self._llm._ctx.ctx  # type: ignore[no-any-return]

    @property
    def _memory(self) -> int:
        return self._llama_cpp.llama_get_memory(self._ctx)  # type: ignore[no-any-return]

    def remove(self, seq: int, start: int = -1, end: int = -1) -> None:
        self._llama_cpp.llama_memory_seq_rm(self._memory, seq, start, end)

    def copy(self, src: int, dst: int, start: int, end: int) -> None:
        self._llama_cpp.llama_memory_seq_cp(self._memory, src, dst, start, end)

    def shift(self, seq: int, start: int, end: int, delta: int) -> None:
        """Move cells by delta positions (the keys' RoPE rotation is redone)."""
        self._llama_cpp.llama_memory_seq_add(self._memory, seq, start, end, delta)

    def span(self, seq: int) -> tuple[int, int]:
        """The first and last positions seq holds, (-1, -1) if none; llama.cpp holds every
        position between them."""
        memory = self._memory
        return (int(self._llama_cpp.llama_memory_seq_pos_min(memory, seq)),
                int(self._llama_cpp.llama_memory_seq_pos_max(memory, seq)))

    def complete(self, n: int) -> bool:
        """Sequence 0 holds positions [0, n) and nothing else, the parking place nothing: any
        prefix of it is what a fresh evaluation of that prefix leaves."""
        return self.span(0) == ((0, n - 1) if n else (-1, -1)) and self.span(PARKING) == (-1, -1)

    def state(self) -> bytes | None:
        """Every cell (of every sequence: only sequence 0's are left when it is saved) with its
        position, as llama_state_seq_get_data gives it for sequence -1. Not sequence 0's own
        state: for a model with sliding-window layers that leaves out the cells the window of the
        sequence's last token has passed, so a restored state cut to a shorter prefix lacked cells
        the next tokens attend to (issue 28: the Gemma 3 270M's completions after a disk-cache
        hit differed from a fresh run's)."""
        size = int(self._llama_cpp.llama_state_seq_get_size(self._ctx, -1))
        buffer = (ctypes.c_uint8 * size)()
        written = int(self._llama_cpp.llama_state_seq_get_data(self._ctx, buffer, size, -1))
        return bytes(buffer)[:written] if written else None

    def load(self, state: bytes) -> bool:
        """A state from state() into sequence 0, all of it read; False if llama.cpp refused it
        (it also refuses a cell that belongs to two sequences). The cells are placed as a live
        evaluation places them (the whole context's restore, llama_state_set_data, puts the
        cache's next free cell back at 0, and a sliding-window cache then overwrites early cells
        in another order than a fresh run: other logits)."""
        buffer = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        return int(self._llama_cpp.llama_state_seq_set_data(self._ctx, buffer, len(state), 0)) == len(state)


class KvCache:
    """The KV cache of one loaded model (shared by every engine made from it)."""

    def __init__(self, llm: Llama):
        self.llm = llm
        self.cells = Cells(llm)
        self.exact_upto = 0

    @property
    def can_shift(self) -> bool:
        return self.cells.can_shift

    @property
    def ubatch(self) -> int:
        return max(1, int(self.llm.context_params.n_ubatch))  # n_ubatch, or n_batch when smaller

    @property
    def held(self) -> np.ndarray:
        """The tokens whose KV sequence 0 holds, in order (a view)."""
        return self.llm.input_ids[: self.llm.n_tokens]

    def prepare(self, prompt: Sequence[int], timings: Timings, on_prompt: PromptProgress | None,
                cache: PromptCache | None, *, exact: bool) -> None:
        """Reuse what can be reused and evaluate the rest of the prompt but its last token (the
        sampler's own call evaluates that one and samples)."""
        splice = not exact and self.can_shift
        plan, source = self._choose(prompt, timings, cache, splice)
        if source.entry is not None and not self._load(source, cache):
            plan, source = reuse.Plan(0, (), len(prompt)), Source(self.held[:0], 0)
        self.exact_upto = 0  # until the plan is carried out: an interrupted one leaves nothing to trust
        try:
            self._carry_out(prompt, plan, on_prompt)
        except RuntimeError:  # llama.cpp refused a step (no room for the cells): start afresh
            self.clear()
            plan = reuse.Plan(0, (), len(prompt))
            self._carry_out(prompt, plan, on_prompt)
        self.exact_upto = len(prompt) if not plan.runs and plan.prefix <= source.exact \
            else min(plan.prefix, source.exact)
        timings.cached_tokens, timings.spliced_tokens, timings.evaluated_tokens = \
            plan.reused, plan.spliced, plan.evaluated
        timings.reuse = "splice" if plan.runs else "prefix" if plan.prefix else "none"

    def finish(self, prompt: Sequence[int], timings: Timings, cache: PromptCache | None) -> None:
        """After generation: keep only the prompt's KV, and offer it to the disk cache when it is
        what a fresh run computes."""
        self._forget_generated(len(prompt))
        from cg.engine.local.prompt_cache import MIN_TOKENS

        computed = len(prompt) - timings.cached_tokens
        if cache is not None and len(prompt) >= MIN_TOKENS and computed >= reuse.MIN_GAIN \
                and self.exact_upto >= len(prompt) == self.llm.n_tokens and self.cells.complete(len(prompt)):
            state = self.cells.state()
            if state is not None:
                cache.save(self.held, state, int(self.llm.n_ctx()))

    def _choose(self, prompt: Sequence[int], timings: Timings, cache: PromptCache | None, splice: bool
                ) -> tuple[reuse.Plan, Source]:
        """The plan that evaluates least: from memory, or from a disk entry when that saves
        MIN_GAIN more. Exact reuse keeps only exact cells; a splice may take them all."""
        from cg.engine.local.prompt_cache import MIN_GAIN

        def plan(tokens: np.ndarray) -> reuse.Plan:
            if splice:
                return reuse.splice(tokens, prompt, self.ubatch, fresh=reuse.FRESH)
            return reuse.exact(tokens, prompt, self.ubatch)

        exact = self.exact_upto if self.cells.complete(len(self.held)) else 0  # else no prefix is exact
        in_memory = Source(self.held if splice else self.held[:exact], exact)
        best, source = plan(in_memory.tokens), in_memory
        if cache is not None and best.evaluated >= MIN_GAIN:
            t0 = time.perf_counter()
            for entry in cache.entries(int(self.llm.n_ctx()), int(self.llm.n_vocab())):
                candidate = plan(entry.tokens)
                if candidate.evaluated + MIN_GAIN <= best.evaluated:
                    best, source = candidate, Source(entry.tokens, len(entry.tokens), entry)
            timings.disk_cache_ms = (time.perf_counter() - t0) * 1000
        return best, source

    def _load(self, source: Source, cache: PromptCache | None) -> bool:
        """A disk entry into sequence 0 (checked against its hash first); False if it failed."""
        assert source.entry is not None and cache is not None
        data = cache.read_state(source.entry)
        if data is None:
            self.clear()
            return False
        if not self.restore(source.tokens, data):
            cache.warn_once("an entry did not load into llama.cpp; evaluating the prompt fresh")
            return False
        if not self.cells.complete(len(source.tokens)):  # its header lies about what the state holds
            self.clear()
            cache.drop(source.entry, "its state does not hold its tokens")
            return False
        return True

    def restore(self, tokens: Sequence[int] | np.ndarray, state: bytes) -> bool:
        """Sequence 0 from a state of exactly these tokens (from Cells.state()); False, and an
        empty cache, if llama.cpp refused it."""
        import numpy as np

        self.clear()
        if len(tokens) > len(self.llm.input_ids) or not self.cells.load(state):
            self.clear()
            return False
        n = len(tokens)
        self.llm.input_ids[:n] = np.asarray(tokens, dtype=np.intc)
        self.llm.n_tokens = n
        self.llm._requires_eval = True  # logits must come from a live decode
        self.exact_upto = n
        return True

    def _carry_out(self, prompt: Sequence[int], plan: reuse.Plan, on_prompt: PromptProgress | None) -> None:
        if not plan.runs:
            _evaluate_exact(self.llm, prompt, plan.prefix, self.ubatch, on_prompt)
            return
        cells = self.cells
        self.llm.n_tokens = plan.prefix
        cells.remove(PARKING)
        for run in plan.runs:
            cells.copy(0, PARKING, run.old, run.old + run.length)
        cells.remove(0, plan.prefix)
        # Every run far away first, then each to its place: the ranges never overlap on the way.
        cells.shift(PARKING, -1, -1, _FAR)
        for run in plan.runs:
            cells.shift(PARKING, run.old + _FAR, run.old + run.length + _FAR, run.shift - _FAR)
        after: list[reuse.Run | None] = [*plan.runs, None]
        for (start, end), joining in zip(plan.spans(), after, strict=True):
            _decode(self.llm, prompt, start, end, on_prompt)
            if joining is not None:  # the run after these tokens joins sequence 0 again
                cells.copy(PARKING, 0, joining.new, joining.new + joining.length)
                cells.remove(PARKING, joining.new, joining.new + joining.length)
        self.llm.input_ids[: len(prompt) - 1] = list(prompt[: len(prompt) - 1])
        self.llm.n_tokens = len(prompt) - 1
        self.llm._requires_eval = True

    def _forget_generated(self, prompt_len: int) -> None:
        """Keep only the prompt's KV. Generated tokens were evaluated one by one, and reusing
        their KV for a later prompt (evaluated in batches) changes its floating-point results
        enough to flip a greedy choice now and then: cg's output must not depend on what ran
        before it, in this process or in the prompt cache."""
        if self.llm.n_tokens > prompt_len:
            self.cells.remove(-1, prompt_len)
            self.llm.n_tokens = prompt_len

    def clear(self) -> None:
        self.cells.remove(-1)
        self.llm.n_tokens = 0
        self.exact_upto = 0


def _decode(llm: Llama, prompt: Sequence[int], start: int, end: int, on_prompt: PromptProgress | None) -> None:
    """Prompt tokens [start, end) at their positions, in sequence 0."""
    step = max(1, int(llm.n_batch))
    for at in range(start, end, step):
        batch = list(prompt[at:min(end, at + step)])
        llm._batch.set_batch(batch=batch, n_past=at, logits_all=False)
        llm._ctx.decode(llm._batch)
        if on_prompt is not None:
            on_prompt(at + len(batch), len(prompt))


def _evaluate_exact(llm: Llama, prompt: Sequence[int], start: int, step: int,
                    on_prompt: PromptProgress | None) -> None:
    """Keep [0, start), then evaluate up to the prompt's last physical batch, one batch per
    call, reporting progress. The batches are the ones one call would make (they start at
    `start`, a multiple of n_ubatch `step`), so the logits are the same bit for bit; generate()
    then sees this part in the KV cache and evaluates the last batch itself."""
    llm.n_tokens = min(llm.n_tokens, start)  # llama-cpp-python reuses what it holds
    end = reuse.aligned(len(prompt), len(prompt), step)
    for at in range(start, end, step):
        llm.eval(list(prompt[at:at + step]))
        if on_prompt is not None:
            on_prompt(at + step, len(prompt))
