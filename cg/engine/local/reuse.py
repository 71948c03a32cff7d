"""Which already-computed prompt tokens a new prompt can reuse: pure functions on token lists.

Two plans. Both keep the common prefix in place; they differ in what follows.

Exact: the common prefix only, cut back to a whole physical batch (llama.cpp's n_ubatch).
llama.cpp evaluates a prompt in chunks of n_ubatch tokens from position 0; resuming at a chunk
boundary makes the rest evaluate in exactly the chunks a fresh run uses, so the logits, and the
greedy output, are bit for bit those of a run without reuse (a split elsewhere changes float
rounding enough to flip a close choice now and then).

Splice: after the first change, more runs of cached tokens are found again in the new prompt
(moved, or at the same place after changed tokens: a PSM prompt whose cursor moved has its
`<|fim_suffix|>` elsewhere and the same text around it). Their KV is kept and moved to the new
positions; the first `fresh` tokens of each run are evaluated again, so the tokens nearest a
change see their real context (EPIC, arXiv 2410.15332; PIE, arXiv 2407.03157). The rest of a
run keeps KV computed in its old context: close to a fresh run, not equal; benchmarks/README.md
measures how close.

In both, the last prompt token is always evaluated: its logits are the ones sampled.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import TypeAlias

    import numpy as np

    Tokens: TypeAlias = Sequence[int] | np.ndarray

FRESH = 32  # tokens evaluated again after each splice (chosen in benchmarks/README.md, section 6)
MIN_RUN = 16  # a moved run shorter than this (after its fresh tokens) is not worth a splice
SPLICE_MIN_GAIN = 64  # a splice must save at least this many evaluated tokens over the exact plan
_GRAM = 8  # tokens a run is found by
_CANDIDATES = 16  # places of one gram tried on either side of its own (repetitive code has many)
_MOST_RUNS = 256  # candidate runs a chain is chosen from (the search is quadratic)


def common_prefix(a: Tokens, b: Tokens) -> int:
    import numpy as np

    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(np.asarray(a[:n], dtype=np.int64) != np.asarray(b[:n], dtype=np.int64))
    return int(diff[0]) if diff.size else n


def aligned(common: int, prompt_len: int, ubatch: int) -> int:
    """The exact rule: whole physical batches of the common prefix, never the last prompt token."""
    return (min(common, prompt_len - 1) // ubatch) * ubatch if prompt_len > 0 else 0


@dataclass(frozen=True)
class Run:
    """Cached tokens [old, old + length) reused as prompt tokens [new, new + length)."""

    old: int
    new: int
    length: int

    @property
    def shift(self) -> int:
        return self.new - self.old


@dataclass(frozen=True)
class Plan:
    prefix: int  # cached tokens [0, prefix) kept where they are (exact)
    runs: tuple[Run, ...]  # more cached tokens after a change, moved to new positions (approximate)
    length: int  # the new prompt's

    @property
    def spliced(self) -> int:
        return sum(r.length for r in self.runs)

    @property
    def reused(self) -> int:
        return self.prefix + self.spliced

    @property
    def evaluated(self) -> int:
        return self.length - self.reused

    def spans(self) -> list[tuple[int, int]]:
        """Prompt positions [start, end) to evaluate, in order: one before each run (possibly
        empty: a run may follow the prefix or another run at once), and the last, up to the
        prompt's last token (left for the sampler's own call)."""
        out, at = [], self.prefix
        for run in self.runs:
            out.append((at, run.new))
            at = run.new + run.length
        out.append((at, self.length - 1))
        return out


def exact(cached: Tokens, prompt: Tokens, ubatch: int) -> Plan:
    """Prompt tokens reusable bit for bit from a cache holding `cached`."""
    return Plan(aligned(common_prefix(cached, prompt), len(prompt), ubatch), (), len(prompt))


def splice(cached: Tokens, prompt: Tokens, ubatch: int, *, fresh: int = FRESH) -> Plan:
    """The exact plan, or a splice plan where that saves at least SPLICE_MIN_GAIN evaluated tokens (and
    leaves less than half the prompt to evaluate: past that, a fresh state is worth more)."""
    base = exact(cached, prompt, ubatch)
    if len(prompt) < 2:
        return base
    prefix = min(common_prefix(cached, prompt), len(prompt) - 1)
    runs = []
    for run in match_runs(cached, prompt, prefix, min_length=fresh + MIN_RUN, cost=fresh):
        end = min(run.new + run.length, len(prompt) - 1)  # never the last prompt token
        length = end - run.new - fresh
        if length >= MIN_RUN:
            runs.append(Run(run.old + fresh, run.new + fresh, length))
    plan = Plan(prefix, tuple(runs), len(prompt))
    if not runs or plan.evaluated + SPLICE_MIN_GAIN > base.evaluated or plan.evaluated * 2 > len(prompt):
        return base
    return plan


def match_runs(cached: Tokens, prompt: Tokens, start: int, *, min_length: int, cost: int = 0) -> list[Run]:
    """Runs of cached[start:] found again in prompt[start:], in order in both (each cached token
    used once): of all the chains of maximal matching runs, the one that reuses the most tokens,
    counting `cost` off each run (the tokens a splice evaluates again). Taking the first match
    from the front instead lets a short decoy (repetitive code repeats itself) push every true
    match behind it out of order."""
    candidates = _maximal_runs(cached, prompt, start, min_length)
    if not candidates:
        return []
    # best[k]: the most a chain ending with candidates[k] reuses, before[k] the run before it
    # there (-1: none). A run may lose its head to the run before it (they overlap in one prompt
    # or the other) as long as min_length is left.
    best = [run.length - cost for run in candidates]
    before = [-1] * len(candidates)
    for k, run in enumerate(candidates):
        for p in range(k):
            if candidates[p].new == run.new:
                continue
            length = run.length - _cut(candidates[p], run)
            if length >= min_length and best[p] + length - cost > best[k]:
                best[k], before[k] = best[p] + length - cost, p
    k = max(range(len(candidates)), key=best.__getitem__)
    chain: list[Run] = []
    while k >= 0:
        run, p = candidates[k], before[k]
        cut = _cut(candidates[p], run) if p >= 0 else 0
        chain.append(Run(run.old + cut, run.new + cut, run.length - cut))
        k = p
    return chain[::-1]


def _cut(prior: Run, run: Run) -> int:
    """How many of run's first tokens overlap prior (which starts no later in the prompt), in
    either prompt; all of it (or more) when run does not end after prior in both."""
    return max(0, prior.new + prior.length - run.new, prior.old + prior.length - run.old)


def _maximal_runs(cached: Tokens, prompt: Tokens, start: int, min_length: int) -> list[Run]:
    """Every run of at least min_length tokens matching in cached[start:] and prompt[start:] that
    cannot be longer at either end, in prompt order (places of a frequent gram: the nearest few)."""
    import numpy as np

    old = np.asarray(cached, dtype=np.int64)
    new = np.asarray(prompt, dtype=np.int64)
    if len(old) - start < _GRAM or len(new) - start < _GRAM:
        return []
    index: dict[bytes, list[int]] = {}
    for i in range(start, len(old) - _GRAM + 1):
        index.setdefault(old[i:i + _GRAM].tobytes(), []).append(i)
    runs: list[Run] = []
    for j in range(start, len(new) - _GRAM + 1):
        places = index.get(new[j:j + _GRAM].tobytes())
        if not places:
            continue
        near = bisect.bisect_left(places, j)
        for i in places[max(0, near - _CANDIDATES):near + _CANDIDATES]:
            if i > start and j > start and old[i - 1] == new[j - 1]:
                continue  # inside a run that starts earlier
            length = _GRAM + _extent(old[i + _GRAM:], new[j + _GRAM:])
            if length >= min_length:
                runs.append(Run(i, j, length))
    if len(runs) > _MOST_RUNS:  # keep the longest
        runs = sorted(heapq.nlargest(_MOST_RUNS, runs, key=lambda r: r.length), key=lambda r: r.new)
    return runs


def _extent(a: np.ndarray, b: np.ndarray) -> int:
    """common_prefix of two arrays, looking at a short head first (most matches end early)."""
    head = common_prefix(a[:_GRAM * 4], b[:_GRAM * 4])
    return head if head < min(len(a), len(b), _GRAM * 4) else common_prefix(a, b)
