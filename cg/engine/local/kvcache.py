"""The local engine's KV cache: what a new prompt reuses of what is already computed, in this
process or in the on-disk prompt cache, and the rest evaluated.

What to reuse is reuse.py's (pure functions on token lists); this module carries it out on the
llama.cpp context (context.py), on one of its sequences. Invariant between two calls: the main
sequence (0) holds exactly the last prompt (the generated tokens are dropped), its `tokens` say
which, and `exact_upto`
how many of the first of them hold what a fresh evaluation would (all of them, unless the last
prompt was spliced: then up to its first change). Exact reuse takes only those; a splice may move
any of them (cells already moved once carry their first context further: llama-server's
--cache-reuse does the same), and only an exact state goes to the disk cache. Splices pile up
their errors: `splice_depth` counts the splices in a row behind the main sequence's state (0:
exact), and a splice asked of a state already max_splice_depth deep reuses its exact prefix
instead (Timings.reuse "refresh"), which leaves an exact state again (the depth measured:
benchmarks/README.md, section 6).

Cutting a state to a prefix is exact only while it holds every position from 0: a sliding-window
cache that is not full-size (swa_full) drops the cells its window has passed, and so would a state
saved for one sequence (see Cells.state). Such a state is never cut for exact reuse, and never
saved (Cells.complete asks llama.cpp which positions sequence 0 holds).

A splice moves runs of cells to new positions while the tokens before them are evaluated. The
batch check of llama.cpp wants a sequence's new tokens to follow its last cell, so the runs wait
in sequence 1 (a parking place: the context's sequences share one cache), are shifted to
their new positions there (llama_memory_seq_add; the keys' RoPE rotation is redone), and join
sequence 0 again just before the tokens after them are evaluated. A model whose cache cannot be
shifted (llama_memory_can_shift) reuses the exact prefix only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cg import settings
from cg.engine.local import reuse
from cg.engine.local.context import Context, DecodeError
from cg.engine.local.context import Sequence as Seq
from cg.engine.protocol import PromptProgress, Timings

if TYPE_CHECKING:
    import numpy as np

    from cg.engine.local.prompt_cache import Entry, PromptCache

MAIN, PARKING = 0, 1  # the sequence prompts are prepared in, and the one moved runs wait in
_FAR = 1 << 24  # positions beyond any prompt: runs are moved there first, so no two ever overlap


class Cancelled(Exception):
    """A cancel flag was seen between two decodes: the cells decoded so far are kept."""


@dataclass(frozen=True)
class Source:
    """What a plan reuses: the cells in memory, or a disk entry to load first."""

    tokens: np.ndarray
    exact: int  # how many of the first tokens hold what a fresh evaluation would
    entry: Entry | None = None


class Cells:
    """The context's KV memory by sequence id: the few calls KvCache (and its tests) make of it.
    Ranges are [start, end) positions; -1 means unbounded (or every sequence)."""

    def __init__(self, context: Context):
        self.context = context
        self.can_shift = context.can_shift

    def remove(self, seq: int, start: int = -1, end: int = -1) -> None:
        if seq < 0:
            for s in self.context.sequences:
                s.remove(start, end)
        else:
            self.context.sequence(seq).remove(start, end)

    def copy(self, src: int, dst: int, start: int, end: int) -> None:
        self.context.sequence(src).copy_to(self.context.sequence(dst), start, end)

    def shift(self, seq: int, start: int, end: int, delta: int) -> None:
        """Move cells by delta positions (the keys' RoPE rotation is redone)."""
        self.context.sequence(seq).shift(start, end, delta)

    def span(self, seq: int) -> tuple[int, int]:
        """The first and last positions seq holds, (-1, -1) if none; llama.cpp holds every
        position between them."""
        return self.context.sequence(seq).span()

    def complete(self, n: int) -> bool:
        """The main sequence holds positions [0, n) and nothing else, every other sequence
        nothing: any prefix of it is what a fresh evaluation of that prefix leaves."""
        return self.span(MAIN) == ((0, n - 1) if n else (-1, -1)) and \
            all(s.span() == (-1, -1) for s in self.context.sequences if s.id != MAIN)

    def state(self) -> bytes | None:
        """Every cell (of every sequence: only the main one's are left when it is saved) with
        its position, as llama_state_seq_get_data gives it for sequence -1. Not sequence 0's own
        state: for a model with sliding-window layers that leaves out the cells the window of the
        sequence's last token has passed, so a restored state cut to a shorter prefix lacked cells
        the next tokens attend to (issue 28)."""
        return self.context.state(-1)

    def load(self, state: bytes) -> bool:
        """A state from state() into the main sequence, all of it read; False if llama.cpp
        refused it (it also refuses a cell that belongs to two sequences). The cells are placed
        as a live evaluation places them (the whole context's restore puts the cache's next free
        cell back at 0, and a sliding-window cache then overwrites early cells in another order)."""
        return self.context.load_state(state, MAIN)


class KvCache:
    """The KV cache of one loaded model (shared by every engine made from it)."""

    def __init__(self, context: Context):
        self.context = context
        self.cells = Cells(context)
        self.main = context.sequence(MAIN)
        self.parking = context.sequence(PARKING)
        self.exact_upto = 0
        self.splice_depth = 0  # splices in a row behind the main sequence's state (0: exact)
        self.max_splice_depth = settings.SPLICE_DEPTH

    @property
    def can_shift(self) -> bool:
        return self.cells.can_shift

    @property
    def ubatch(self) -> int:
        return self.context.n_ubatch

    @property
    def held(self) -> np.ndarray:
        """The tokens whose KV the main sequence holds, in order."""
        import numpy as np

        return np.asarray(self.main.tokens, dtype=np.intc)

    def prepare(self, prompt: Sequence[int], timings: Timings, on_prompt: PromptProgress | None,
                cache: PromptCache | None, *, exact: bool, cancel: Callable[[], bool] | None = None) -> int:
        """Reuse what can be reused and evaluate the rest of the prompt in the main sequence;
        returns the output row of its last token's logits. Raises Cancelled (the cells decoded
        so far kept) when cancel() turns true between two decodes."""
        refresh = not exact and self.splice_depth >= self.max_splice_depth
        splice = not exact and self.can_shift and not refresh
        plan, source = self._choose(prompt, timings, cache, splice)
        if source.entry is not None and not _load(self, source, cache):
            plan, source = reuse.Plan(0, (), len(prompt)), Source(self.held[:0], 0)
        depth = 0 if source.entry is not None else self.splice_depth  # the state the plan starts from
        # until the plan is carried out: an interrupted one leaves nothing to trust
        self.exact_upto, self.splice_depth = 0, 0
        timings.cached_tokens, timings.spliced_tokens, timings.evaluated_tokens = \
            plan.reused, plan.spliced, plan.evaluated
        timings.reuse = "splice" if plan.runs else "refresh" if refresh else "prefix" if plan.prefix else "none"
        trusted = min(plan.prefix, source.exact)
        try:
            try:
                row = self._carry_out(prompt, plan, on_prompt, cancel)
            except DecodeError:  # llama.cpp refused a step (no room for the cells): start afresh
                self.clear()
                plan = reuse.Plan(0, (), len(prompt))
                trusted = 0
                timings.cached_tokens, timings.spliced_tokens, timings.evaluated_tokens = 0, 0, len(prompt)
                timings.reuse = "none"
                row = self._carry_out(prompt, plan, on_prompt, cancel)
        except Cancelled:
            self.parking.clear()
            self.main.tokens = self.main.tokens[:max(0, self.main.span()[1] + 1)]
            # an exact plan decodes on from its exact prefix: all of it is exact
            self._settle(len(self.main.tokens) if not plan.runs and plan.prefix <= source.exact
                         else min(trusted, len(self.main.tokens)), depth)
            raise
        self._settle(len(prompt) if not plan.runs and plan.prefix <= source.exact else trusted, depth)
        return row

    def _settle(self, exact_upto: int, depth: int) -> None:
        """After a plan: how much of the state is exact, and the splices in a row behind it (one
        more than the state it started from, unless all of it is exact)."""
        self.exact_upto = exact_upto
        self.splice_depth = 0 if exact_upto >= len(self.main.tokens) else depth + 1

    def finish(self, prompt: Sequence[int], timings: Timings, cache: PromptCache | None) -> None:
        """After generation: keep only the prompt's KV, and offer it to the disk cache when it is
        what a fresh run computes."""
        self._forget_generated(len(prompt))
        from cg.engine.local.prompt_cache import DISK_MIN_GAIN, MIN_TOKENS

        computed = len(prompt) - timings.cached_tokens
        if cache is not None and len(prompt) >= MIN_TOKENS and computed >= DISK_MIN_GAIN \
                and self.exact_upto >= len(prompt) == len(self.main.tokens) and self.cells.complete(len(prompt)):
            state = self.cells.state()
            if state is not None:
                cache.save(self.held, state, self.context.n_ctx())

    def _choose(self, prompt: Sequence[int], timings: Timings, cache: PromptCache | None, splice: bool
                ) -> tuple[reuse.Plan, Source]:
        """The plan that evaluates least: from memory, or from a disk entry when that saves
        DISK_MIN_GAIN more. Exact reuse keeps only exact cells; a splice may take them all."""
        from cg.engine.local.prompt_cache import DISK_MIN_GAIN

        def plan(tokens: np.ndarray) -> reuse.Plan:
            if splice:
                return reuse.splice(tokens, prompt, self.ubatch, fresh=reuse.FRESH)
            return reuse.exact(tokens, prompt, self.ubatch)

        held = self.held
        exact = self.exact_upto if self.cells.complete(len(held)) else 0  # else no prefix is exact
        in_memory = Source(held if splice else held[:exact], exact)
        best, source = plan(in_memory.tokens), in_memory
        if cache is not None and best.evaluated >= DISK_MIN_GAIN:
            t0 = time.perf_counter()
            for entry in cache.entries(self.context.n_ctx(), self.context.n_vocab()):
                candidate = plan(entry.tokens)
                if candidate.evaluated + DISK_MIN_GAIN <= best.evaluated:
                    best, source = candidate, Source(entry.tokens, len(entry.tokens), entry)
            timings.disk_cache_ms = (time.perf_counter() - t0) * 1000
        return best, source

    def restore(self, tokens: Sequence[int] | np.ndarray, state: bytes) -> bool:
        """The main sequence from a state of exactly these tokens (from Cells.state()); False,
        and an empty cache, if llama.cpp refused it."""
        self.clear()
        if len(tokens) > self.context.n_ctx() or not self.cells.load(state):
            self.clear()
            return False
        self.main.tokens = [int(t) for t in tokens]
        self.exact_upto, self.splice_depth = len(tokens), 0
        return True

    def _carry_out(self, prompt: Sequence[int], plan: reuse.Plan, on_prompt: PromptProgress | None,
                   cancel: Callable[[], bool] | None) -> int:
        def progress(done: int) -> None:
            if on_prompt is not None and done < len(prompt):
                on_prompt(done, len(prompt))
            if cancel is not None and cancel():
                raise Cancelled

        if cancel is not None and cancel():
            raise Cancelled
        if not plan.runs:  # whole batches from a multiple of n_ubatch: a fresh run's, bit for bit
            self.main.truncate(plan.prefix)
            return self.context.evaluate(self.main, prompt[plan.prefix:], on_chunk=progress)
        return _splice(self.context, self.main, self.parking, prompt, plan, progress)

    def _forget_generated(self, prompt_len: int) -> None:
        """Keep only the prompt's KV. Generated tokens were evaluated one by one, and reusing
        their KV for a later prompt (evaluated in batches) changes its floating-point results
        enough to flip a greedy choice now and then: cg's output must not depend on what ran
        before it, in this process or in the prompt cache."""
        self.main.truncate(prompt_len)

    def clear(self) -> None:
        self.context.clear()
        self.exact_upto, self.splice_depth = 0, 0


def _load(kv: KvCache, source: Source, cache: PromptCache | None) -> bool:
    """A disk entry into the main sequence (checked against its hash first); False if it failed."""
    assert source.entry is not None and cache is not None
    data = cache.read_state(source.entry)
    if data is None:
        kv.clear()
        return False
    if not kv.restore(source.tokens, data):
        cache.warn_once("an entry did not load into llama.cpp; evaluating the prompt fresh")
        return False
    if not kv.cells.complete(len(source.tokens)):  # its header lies about what the state holds
        kv.clear()
        cache.drop(source.entry, "its state does not hold its tokens")
        return False
    return True


def _splice(ctx: Context, main: Seq, parking: Seq, prompt: Sequence[int], plan: reuse.Plan,
            progress: Callable[[int], None]) -> int:
    """Carry out a splice plan in main, its runs waiting in parking; the output row of the last token."""
    parking.clear()
    for run in plan.runs:
        main.copy_to(parking, run.old, run.old + run.length)
    main.truncate(plan.prefix)
    # Every run far away first, then each to its place: the ranges never overlap on the way.
    parking.shift(-1, -1, _FAR)
    for run in plan.runs:
        parking.shift(run.old + _FAR, run.old + run.length + _FAR, run.shift - _FAR)
    after: list[reuse.Run | None] = [*plan.runs, None]
    for (start, end), joining in zip(plan.spans(), after, strict=True):
        assert len(main.tokens) == start
        ctx.evaluate(main, prompt[start:end], on_chunk=progress, chunk=ctx.n_batch)
        if joining is not None:  # the run after these tokens joins the main sequence again
            parking.copy_to(main, joining.new, joining.new + joining.length)
            parking.remove(joining.new, joining.new + joining.length)
            main.tokens.extend(int(t) for t in prompt[joining.new:joining.new + joining.length])
    parking.tokens = []
    return ctx.evaluate(main, prompt[len(prompt) - 1:])  # the last token alone, as the landed engine did
