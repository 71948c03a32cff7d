"""`cg eval humaneval-infill`: fill every task through `complete()` (the `cg complete` path),
score it in the sandbox as the official harness builds the program, stream results to JSON lines,
report pass@1 (and pass@k with several samples).

Generation runs `gen_jobs` tasks at a time (1 for the local engine: one llama.cpp context; more
against a server, which batches them); scoring runs in up to `jobs` sandboxed subprocesses
alongside. Result lines are written in task order whatever finishes first, flushed one by one, so
a parallel run writes the same file as a serial one and an interrupted run continues with --resume.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..complete import EVAL_MAX_TOKENS, RunOptions, complete, get_engine
from ..engine import Engine, LogitsProcessor
from ..errors import InputError, NoFimError, OutputExistsError, UsageError
from ..progress import progress_bar
from .sandbox import Limits, run_program
from .tasks import BENCHMARKS, Task, load, spread

# The usual HumanEval stop words (left-to-right generation); optional for infilling.
STOP_WORDS = ("\nclass", "\ndef", "\n#", "\nif")
PASS_AT = (1, 10, 100)

Record = dict[str, Any]


@dataclass
class EvalOptions:
    benchmark: str = "single-line"
    limit: int | None = None
    jobs: int = 2  # programs scored at once
    gen_jobs: int = 1  # completions in flight (a server can take several)
    out: Path | None = None  # None: not saved; Path("-"): JSON lines on stdout
    resume: bool = False
    force: bool = False
    self_check: bool = False
    stop_words: bool = False
    repair_newline: bool = False
    n_samples: int = 1
    limits: Limits = field(default_factory=Limits)
    run: RunOptions = field(default_factory=lambda: RunOptions(max_tokens=EVAL_MAX_TOKENS, quiet=True))


@dataclass
class Summary:
    benchmark: str
    model: str
    tasks: int
    samples: int  # per task
    passed: int  # samples that passed, over all tasks
    resumed: int  # samples taken from the results file
    pass_at_1: float
    pass_at_k: dict[str, float]
    scoring: str
    gen_seconds: float  # mean per sample
    score_seconds: float  # mean per sample
    wall_seconds: float

    def to_json(self) -> dict[str, Any]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}

    def table(self) -> str:
        rows = [("benchmark", f"HumanEval infilling, {self.benchmark}"), ("model", self.model),
                ("tasks", f"{self.tasks}" + (f" x {self.samples} samples" if self.samples > 1 else "")
                 + (f" ({self.resumed} from the results file)" if self.resumed else "")),
                ("passed", str(self.passed)), ("pass@1", f"{100 * self.pass_at_1:.2f}%"),
                *((name, f"{100 * value:.2f}%") for name, value in self.pass_at_k.items() if name != "pass@1"),
                ("scoring", self.scoring),
                ("time/task", f"{self.gen_seconds + self.score_seconds:.2f} s (generation {self.gen_seconds:.2f} s, "
                              f"scoring {self.score_seconds:.2f} s)"),
                ("wall", f"{self.wall_seconds:.1f} s")]
        return "\n".join(f"{k:<10} {v}" for k, v in rows) + "\n"


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimator of Chen et al. 2021: 1 - C(n - c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def tasks_for(benchmark: str) -> list[Task]:
    if benchmark not in BENCHMARKS:
        raise InputError(f"unknown benchmark {benchmark!r}", "Use --benchmark " + ", ".join(BENCHMARKS) + ".")
    return load(benchmark)


def evaluate(eo: EvalOptions, *, engine: Engine | None = None,
             processor_for: Callable[[Task], LogitsProcessor] | None = None,
             tasks: list[Task] | None = None) -> Summary:
    """Run the benchmark; `processor_for(task)` may add a logits processor per task (tests, sampling hooks)."""
    if eo.n_samples > 1 and eo.run.sampling.temperature == 0 and not eo.self_check:
        raise UsageError("--n-samples above 1 needs --temperature above 0 (greedy samples are all alike)",
                         "Add e.g. --temperature 0.8, or drop --n-samples.")
    start = time.perf_counter()
    chosen = spread(tasks if tasks is not None else tasks_for(eo.benchmark), eo.limit)
    wanted = [(t, s) for t in chosen for s in range(eo.n_samples)]
    done = _previous(eo, {(t.task_id, s) for t, s in wanted})
    pending = [(t, s) for t, s in wanted if (t.task_id, s) not in done]
    model = "canonical solutions (--self-check)"
    if not eo.self_check:
        engine = engine or get_engine(eo.run)
        model = engine.info.label
        if not engine.info.special.has_fim:
            raise NoFimError(f"{model} has no fill-in-the-middle tokens: HumanEval infilling measures FIM",
                             "Install CodeGemma (cg download codegemma-2b) or pass --model with a CodeGemma GGUF.")

    def generate(task: Task, sample: int) -> tuple[str, Record, float]:
        if eo.self_check:
            return task.canonical_solution, {"completion_tokens": 0, "stop_reason": "canonical"}, 0.0
        t0 = time.perf_counter()
        # Exact reuse only: a task's result must not depend on the tasks before it.
        opts = replace(eo.run, exact=True, sampling=replace(eo.run.sampling, seed=eo.run.sampling.seed + sample))
        result = complete(task.prompt, task.suffix, opts=opts, engine=engine, require_fim=True,
                          stop=STOP_WORDS if eo.stop_words else (),
                          logits_processor=processor_for(task) if processor_for else None)
        return result.text, {"completion_tokens": result.completion_tokens, "stop_reason": result.stop_reason}, \
            time.perf_counter() - t0

    results: dict[tuple[str, int], Record] = dict(done)
    with _results_writer(eo, [(t.task_id, s) for t, s in pending]) as write, \
            progress_bar(f"HumanEval {eo.benchmark}", total=len(pending)) as advance:
        for record in _run(pending, generate, eo):
            results[(record["task_id"], record["sample"])] = record
            write(record)
            advance(1)
    return _summary(eo, chosen, results, model, len(done), time.perf_counter() - start)


Generated = tuple[str, Record, float]  # text, info, seconds


def _run(pending: list[tuple[Task, int]], generate: Callable[[Task, int], Generated],
         eo: EvalOptions) -> Iterator[Record]:
    """Generate (gen_jobs at a time) and score (jobs at a time); yield records as they finish."""
    gen_width, score_width = max(1, eo.gen_jobs), max(1, eo.jobs)
    with ThreadPoolExecutor(score_width) as scorers, ThreadPoolExecutor(gen_width) as generators:
        generating: dict[Future[Generated], tuple[Task, int]] = {}
        scoring: set[Future[Record]] = set()
        queue = iter(pending)
        while True:
            # Keep gen_width completions in flight, and generation at most one round ahead of scoring.
            while len(generating) < gen_width and len(scoring) < 2 * score_width:
                item = next(queue, None)
                if item is None:
                    break
                generating[_start(generators, generate, item, inline=gen_width == 1)] = item
            if not generating and not scoring:
                return
            in_flight: list[Future[Any]] = [*generating, *scoring]
            finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for fut in finished:
                if fut in generating:
                    task, sample = generating.pop(fut)
                    text, info, seconds = fut.result()
                    scoring.add(scorers.submit(_score, task, sample, text, info, seconds, eo))
                else:
                    scoring.discard(fut)
                    yield fut.result()


def _start(pool: ThreadPoolExecutor, generate: Callable[[Task, int], Generated], item: tuple[Task, int], *,
           inline: bool) -> Future[Generated]:
    """Inline for the local engine: it generates in this (the main) thread, where Ctrl-C lands."""
    if not inline:
        return pool.submit(generate, *item)
    done: Future[Generated] = Future()
    done.set_result(generate(*item))
    return done


def _score(task: Task, sample: int, text: str, info: Record, gen_s: float, eo: EvalOptions) -> Record:
    outcome = run_program(task.program(text, repair_newline=eo.repair_newline), eo.limits)
    return {"task_id": task.task_id, "completion": text, "sample": sample, "passed": outcome.passed,
            "result": outcome.result, **info, "gen_seconds": round(gen_s, 4),
            "score_seconds": round(outcome.seconds, 4)}


def _summary(eo: EvalOptions, tasks: list[Task], results: dict[tuple[str, int], Record], model: str, resumed: int,
             wall: float) -> Summary:
    records = [results[(t.task_id, s)] for t in tasks for s in range(eo.n_samples)]
    correct = [sum(results[(t.task_id, s)]["passed"] for s in range(eo.n_samples)) for t in tasks]
    n = eo.n_samples
    per_k = {f"pass@{k}": sum(pass_at_k(n, c, k) for c in correct) / max(1, len(tasks)) for k in PASS_AT if k <= n}
    count = max(1, len(records))
    scoring = "official (prompt + completion + suffix, as is)"
    if eo.repair_newline:
        scoring = "official + cg's newline repair (--repair-newline)"
    if eo.stop_words:
        scoring += "; stop words " + " ".join(repr(w) for w in STOP_WORDS)
    return Summary(
        benchmark=eo.benchmark, model=model, tasks=len(tasks), samples=n, passed=sum(r["passed"] for r in records),
        resumed=resumed, pass_at_1=per_k["pass@1"], pass_at_k=per_k, scoring=scoring,
        gen_seconds=sum(r["gen_seconds"] for r in records) / count,
        score_seconds=sum(r["score_seconds"] for r in records) / count, wall_seconds=wall)


def _previous(eo: EvalOptions, wanted: set[tuple[str, int]]) -> dict[tuple[str, int], Record]:
    """Results already in --out (with --resume); refuses to overwrite one without --resume/--force."""
    if eo.out is None or str(eo.out) == "-" or not eo.out.exists():
        return {}
    if not eo.resume:
        if eo.force:
            return {}
        raise OutputExistsError(f"{eo.out} already exists",
                                "Pass --resume to continue it, or --force to start over.")
    data = eo.out.read_bytes()
    if data and not data.endswith(b"\n"):  # a line cut by an interruption: drop it, it is redone
        data = data[:data.rfind(b"\n") + 1]
        with open(eo.out, "r+b") as f:
            f.truncate(len(data))
    done = {}
    for line in data.decode("utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        key = (record.get("task_id"), record.get("sample", 0))
        if key in wanted:
            done[key] = record
    return done


@contextmanager
def _results_writer(eo: EvalOptions, order: list[tuple[str, int]]) -> Iterator[Callable[[Record], None]]:
    """Appends one JSON line per result in `order`, each flushed as soon as all before it are
    written (so --resume loses nothing and a parallel run writes a serial run's file)."""
    if eo.out is None:
        yield lambda _record: None
        return
    if str(eo.out) == "-":
        file = sys.stdout
    else:
        eo.out.parent.mkdir(parents=True, exist_ok=True)
        file = open(eo.out, "a" if eo.resume else "w", encoding="utf-8")  # noqa: SIM115 - closed below
    waiting: dict[tuple[str, int], Record] = {}
    position = 0

    def write(record: Record) -> None:
        nonlocal position
        waiting[(record["task_id"], record["sample"])] = record
        while position < len(order) and order[position] in waiting:
            file.write(json.dumps(waiting.pop(order[position]), ensure_ascii=False) + "\n")
            file.flush()
            position += 1

    try:
        yield write
    finally:
        if file is not sys.stdout:
            file.close()


def default_jobs() -> int:
    return max(1, min(4, (os.cpu_count() or 2) - 1))
