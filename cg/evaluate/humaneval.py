"""`cg eval humaneval-infill`: fill every task through `complete()` (the `cg complete` path),
score it in the sandbox, stream per-task results to JSON lines, report pass@1.

Generation runs in this process, one task at a time (one model); scoring runs in up to
`jobs` sandboxed subprocesses alongside it. Every result line is flushed as it is scored, so an
interrupted run continues with --resume.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ..complete import RunOptions, complete, get_engine
from ..engine import Engine, LogitsProcessor
from ..errors import InputError, OutputExistsError
from ..progress import progress_bar
from .sandbox import Limits, run_program
from .tasks import BENCHMARKS, Task, build, spread

# The usual HumanEval stop words (left-to-right generation); optional for infilling.
STOP_WORDS = ("\nclass", "\ndef", "\n#", "\nif")


@dataclass
class EvalOptions:
    benchmark: str = "single-line"
    limit: int | None = None
    jobs: int = 2
    out: Path | None = None  # None: not saved; Path("-"): JSON lines on stdout
    resume: bool = False
    force: bool = False
    self_check: bool = False
    stop_words: bool = False
    limits: Limits = field(default_factory=Limits)
    run: RunOptions = field(default_factory=lambda: RunOptions(max_tokens=256, quiet=True))


@dataclass
class Summary:
    benchmark: str
    model: str
    tasks: int
    passed: int
    resumed: int
    pass_at_1: float
    gen_seconds: float  # mean per task
    score_seconds: float  # mean per task
    wall_seconds: float

    def to_json(self) -> dict[str, Any]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}

    def table(self) -> str:
        rows = [("benchmark", f"HumanEval infilling, {self.benchmark}"), ("model", self.model),
                ("tasks", f"{self.tasks}" + (f" ({self.resumed} from the results file)" if self.resumed else "")),
                ("passed", str(self.passed)), ("pass@1", f"{100 * self.pass_at_1:.2f}%"),
                ("time/task", f"{self.gen_seconds + self.score_seconds:.2f} s (generation {self.gen_seconds:.2f} s, "
                              f"scoring {self.score_seconds:.2f} s)"),
                ("wall", f"{self.wall_seconds:.1f} s")]
        return "\n".join(f"{k:<10} {v}" for k, v in rows) + "\n"


def evaluate(eo: EvalOptions, *, engine: Engine | None = None,
             processor_for: Callable[[Task], LogitsProcessor] | None = None,
             tasks: list[Task] | None = None) -> Summary:
    """Run the benchmark; `processor_for(task)` may add a logits processor per task (tests, sampling hooks)."""
    if eo.benchmark not in BENCHMARKS:
        raise InputError(f"unknown benchmark {eo.benchmark!r}", "Use --benchmark single-line or multi-line.")
    start = time.perf_counter()
    tasks = spread(tasks if tasks is not None else build(eo.benchmark), eo.limit)
    done = _previous(eo, {t.task_id for t in tasks})
    pending = [t for t in tasks if t.task_id not in done]
    model = "canonical solutions (--self-check)"
    if not eo.self_check:
        engine = engine or get_engine(eo.run)
        model = engine.path.name
    results = dict(done)
    stops = STOP_WORDS if eo.stop_words else ()
    with _results_writer(eo) as write, ThreadPoolExecutor(max(1, eo.jobs)) as pool, \
            progress_bar(f"HumanEval {eo.benchmark}", total=len(pending)) as advance:
        running: set[Future[dict[str, Any]]] = set()

        def collect(block: bool) -> None:
            finished, _ = wait(running, return_when=FIRST_COMPLETED, timeout=None if block else 0)
            for fut in finished:
                running.discard(fut)
                record = fut.result()
                results[record["task_id"]] = record
                write(record)
                advance(1)

        for task in pending:
            if eo.self_check:
                text, info, gen_s = task.canonical, {"completion_tokens": 0, "stop_reason": "canonical"}, 0.0
            else:
                t0 = time.perf_counter()
                result = complete(task.prefix, task.suffix, opts=eo.run, engine=engine, require_fim=True, stop=stops,
                                  logits_processor=processor_for(task) if processor_for else None)
                text, gen_s = result.text, time.perf_counter() - t0
                info = {"completion_tokens": result.completion_tokens, "stop_reason": result.stop_reason}
            running.add(pool.submit(_score, task, text, info, gen_s, eo.limits))
            while len(running) >= max(1, eo.jobs):
                collect(block=True)
            collect(block=False)
        while running:
            collect(block=True)
    scored = [results[t.task_id] for t in tasks]
    n = len(scored) or 1
    passed = sum(r["passed"] for r in scored)
    return Summary(
        benchmark=eo.benchmark, model=model, tasks=len(scored), passed=passed,
        resumed=len(done), pass_at_1=passed / n,
        gen_seconds=sum(r["gen_seconds"] for r in scored) / n,
        score_seconds=sum(r["score_seconds"] for r in scored) / n,
        wall_seconds=time.perf_counter() - start)


def _score(task: Task, text: str, info: dict[str, Any], gen_s: float, limits: Limits) -> dict[str, Any]:
    outcome = run_program(task.program(text), limits)
    return {"task_id": task.task_id, "completion": text, "passed": outcome.passed, "result": outcome.result,
            **info, "gen_seconds": round(gen_s, 4), "score_seconds": round(outcome.seconds, 4)}


def _previous(eo: EvalOptions, wanted: set[str]) -> dict[str, dict[str, Any]]:
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
        if record.get("task_id") in wanted:
            done[record["task_id"]] = record
    return done


class _results_writer:
    """Appends one JSON line per result, flushed at once (so --resume loses nothing)."""

    def __init__(self, eo: EvalOptions):
        self.eo = eo
        self.file: TextIO | None = None

    def __enter__(self) -> Callable[[dict[str, Any]], None]:
        if self.eo.out is not None:
            if str(self.eo.out) == "-":
                self.file = sys.stdout
            else:
                self.eo.out.parent.mkdir(parents=True, exist_ok=True)
                self.file = open(self.eo.out, "a" if self.eo.resume else "w", encoding="utf-8")
        return self.write

    def write(self, record: dict[str, Any]) -> None:
        if self.file is not None:
            self.file.write(json.dumps(record, ensure_ascii=False) + "\n")
            self.file.flush()

    def __exit__(self, *exc: object) -> None:
        if self.file is not None and self.file is not sys.stdout:
            self.file.close()


def default_jobs() -> int:
    return max(1, min(4, (os.cpu_count() or 2) - 1))
