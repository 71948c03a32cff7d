"""Several prompts decoded together in one context: the targets of one file, the tasks of an eval.

Each job gets its own sequence. The first is prepared in the main sequence as generate() prepares
a prompt (every reuse of kvcache.py: memory, the disk cache, a splice); each later one shares the
cells of the longest prefix it has in common with an earlier job (llama_memory_seq_cp, whole
physical batches of it, as the exact plan keeps) and evaluates the rest itself. Prompts are
evaluated one job after another (each job's first token sampled from its own logits), then every
step is one llama_decode of one token for each unfinished job: on a CPU a step for five
sequences costs little more than a step for one (decoding is bound by reading the weights).

A job ends on a stop id (its piece is yielded first), on its max_tokens, or when its cancel()
turns true between two steps; its cells stay until the whole run ends. Jobs that do not fit the
context's cells together (or its sequences) are run in waves, one after another. At the end the
main sequence keeps the first job's prompt (the invariant kvcache.py keeps), the others are freed.

Batching changes the floating-point rounding of a step (a batch of several tokens runs other
kernels than one token, other sequences' cells sit in the attention window): greedy text can
differ from generate()'s now and then; tests/test_batched.py measures how often.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cg.engine.local import reuse
from cg.engine.local.kvcache import MAIN, PARKING, Cancelled
from cg.engine.local.sampler import Sampler
from cg.engine.protocol import LogitsProcessor, Piece, Sampling, Timings
from cg_core import interrupts

if TYPE_CHECKING:
    from cg.engine.local.context import Sequence as Seq
    from cg.engine.local.engine import LocalEngine


@dataclass
class Job:
    """One prompt of generate_many, with what its generate() call would take."""

    prompt: Sequence[int]
    max_tokens: int
    sampling: Sampling = field(default_factory=Sampling)
    logit_bias: dict[int, float] | None = None
    logits_processor: LogitsProcessor | None = None
    cancel: Callable[[], bool] | None = None
    timings: Timings = field(default_factory=Timings)


@dataclass
class _Running:
    index: int
    job: Job
    seq: Seq
    sampler: Sampler
    token: int = -1
    produced: int = 0
    done: bool = False


def waves(engine: LocalEngine, jobs: Sequence[Job]) -> list[list[int]]:
    """Job indexes in groups that fit the context together: at most its sequences but the
    parking one, and their prompts (what they share counted once) and generated tokens within
    its cells. A job too large for the context alone is a wave of its own (and fails as generate() would)."""
    ctx = engine.llm
    slots = len(ctx.sequences) - 1
    out: list[list[int]] = []
    used = 0
    for i, job in enumerate(jobs):
        shared = max((_shareable(jobs[k].prompt, job.prompt, ctx.n_ubatch) for k in out[-1]), default=0) \
            if out else 0
        need = len(job.prompt) - shared + job.max_tokens
        if not out or len(out[-1]) >= slots or used + need + ctx.n_ubatch > ctx.n_ctx():
            out.append([i])
            used = len(job.prompt) + job.max_tokens
        else:
            out[-1].append(i)
            used += need
    return out


def _shareable(donor: Sequence[int], prompt: Sequence[int], ubatch: int) -> int:
    return reuse.aligned(reuse.common_prefix(donor, prompt), len(prompt), ubatch)


def generate_many(engine: LocalEngine, jobs: Sequence[Job], *, exact: bool = True,
                  stop_ids: frozenset[int] | None = None) -> Generator[tuple[int, Piece], None, None]:
    """(job index, Piece) for every job, wave after wave (see the module's doc)."""
    stops = engine.info.special.stop_ids if stop_ids is None else stop_ids
    for wave in waves(engine, jobs):
        yield from _run_wave(engine, [(i, jobs[i]) for i in wave], exact, stops)


def _run_wave(engine: LocalEngine, wave: list[tuple[int, Job]], exact: bool,
              stops: frozenset[int]) -> Generator[tuple[int, Piece], None, None]:
    ctx, kv = engine.llm, engine.kv
    free = [s for s in ctx.sequences if s.id not in (MAIN, PARKING)]
    running: list[_Running] = []
    first = wave[0][1]
    try:
        for n, (index, job) in enumerate(wave):
            seq = kv.main if n == 0 else free[n - 1]
            run = _Running(index, job, seq, Sampler(ctx, job.sampling, job.logit_bias, job.logits_processor))
            running.append(run)
            try:
                row = kv.prepare(job.prompt, job.timings, None, engine.prompt_cache, exact=exact, cancel=job.cancel) \
                    if n == 0 else _prepare(engine, running[:-1], run)
            except Cancelled:
                run.done = True
                continue
            if job.max_tokens <= 0:
                run.done = True
                continue
            run.token = run.sampler.sample(row, seq.tokens)
        while True:
            moves = []
            for run in running:
                if run.done:
                    continue
                token = run.token
                yield run.index, Piece((token,), ctx.model.detokenize([token]))
                run.produced += 1
                cancelled = run.job.cancel is not None and run.job.cancel()
                if token in stops or run.produced >= run.job.max_tokens or cancelled:
                    run.done = True
                else:
                    moves.append(run)
            if not moves:
                return
            rows = ctx.step([(run.seq, run.token) for run in moves])
            interrupts.check()
            for run, row in zip(moves, rows, strict=True):
                run.token = run.sampler.sample(row, run.seq.tokens)
    finally:
        for run in running:
            run.sampler.close()
            if run.seq.id != MAIN:
                run.seq.clear()
        kv.finish(first.prompt, first.timings, engine.prompt_cache)


def _prepare(engine: LocalEngine, earlier: list[_Running], run: _Running) -> int:
    """A later job's prompt in its own sequence: the longest whole-batch prefix an earlier job's
    prompt shares with it (the exact part of the main sequence's), then the rest evaluated."""
    ctx, kv, prompt = engine.llm, engine.kv, run.job.prompt
    best, donor = 0, None
    for other in earlier:
        tokens = other.seq.tokens[:kv.exact_upto] if other.seq.id == MAIN else other.seq.tokens
        shared = _shareable(tokens, prompt, ctx.n_ubatch)
        if shared > best:
            best, donor = shared, other.seq
    run.seq.clear()
    if donor is not None:
        donor.share_prefix(run.seq, best)
    t = run.job.timings
    t.cached_tokens, t.spliced_tokens, t.evaluated_tokens = best, 0, len(prompt) - best
    t.reuse = "prefix" if best else "none"
    cancel = run.job.cancel

    def check(_done: int) -> None:
        if cancel is not None and cancel():
            raise Cancelled

    check(0)
    return ctx.evaluate(run.seq, prompt[best:], on_chunk=check)
