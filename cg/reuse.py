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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import TypeAlias

    import numpy as np

    Tokens: TypeAlias = Sequence[int] | np.ndarray

FRESH = 32  # tokens evaluated again after each splice (chosen in benchmarks/README.md, section 6)
MIN_RUN = 16  # a moved run shorter than this (after its fresh tokens) is not worth a splice
MIN_GAIN = 64  # a splice must save at least this many evaluated tokens over the exact plan
_GRAM = 8  # tokens a run is found by
_CANDIDATES = 16  # places of one gram tried (repetitive code has many)


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
    """The exact plan, or a splice plan where that saves at least MIN_GAIN evaluated tokens (and
    leaves less than half the prompt to evaluate: past that, a fresh state is worth more)."""
    base = exact(cached, prompt, ubatch)
    if len(prompt) < 2:
        return base
    prefix = min(common_prefix(cached, prompt), len(prompt) - 1)
    runs = []
    for run in match_runs(cached, prompt, prefix, min_length=fresh + MIN_RUN):
        end = min(run.new + run.length, len(prompt) - 1)  # never the last prompt token
        length = end - run.new - fresh
        if length >= MIN_RUN:
            runs.append(Run(run.old + fresh, run.new + fresh, length))
    plan = Plan(prefix, tuple(runs), len(prompt))
    if not runs or plan.evaluated + MIN_GAIN > base.evaluated or plan.evaluated * 2 > len(prompt):
        return base
    return plan


def match_runs(cached: Tokens, prompt: Tokens, start: int, *, min_length: int) -> list[Run]:
    """Runs of cached[start:] found again in prompt[start:], in order in both (each cached token
    used once), greedily from the front of the prompt, each as long as it goes."""
    import numpy as np

    old = np.asarray(cached, dtype=np.int64)
    new = np.asarray(prompt, dtype=np.int64)
    if len(old) - start < _GRAM or len(new) - start < _GRAM:
        return []
    index: dict[bytes, list[int]] = {}
    for i in range(start, len(old) - _GRAM + 1):
        index.setdefault(old[i:i + _GRAM].tobytes(), []).append(i)
    runs: list[Run] = []
    j, floor = start, start
    while j + _GRAM <= len(new):
        best: Run | None = None
        places = index.get(new[j:j + _GRAM].tobytes(), [])
        first = bisect.bisect_left(places, floor)
        for i in places[first:first + _CANDIDATES]:
            length = _GRAM + common_prefix(old[i + _GRAM:], new[j + _GRAM:])
            if best is None or length > best.length:
                best = Run(i, j, length)
            if length >= 4 * min_length:
                break  # long enough: looking further costs more than it finds
        if best is not None and best.length >= min_length:
            runs.append(best)
            j, floor = j + best.length, best.old + best.length
        else:
            j += 1
    return runs
