"""`cg eval humaneval-infill`: fill every task through `complete()` (the `cg complete` path),
score it in the sandbox as the official harness builds the program, stream results to JSON lines,
report pass@1 (and pass@k with several samples).

Generation runs `gen_jobs` tasks at a time (1 for the local engine: one llama.cpp context; more
against a server, which batches them); scoring runs in up to `jobs` sandboxed subprocesses
alongside. Result lines are written in task order whatever finishes first, flushed one by one, so
a parallel run writes the same file as a serial one and an interrupted run continues with --resume.
Every line carries the run it belongs to (a digest of the benchmark, model and settings), so
--resume continues only a results file of the same run and leaves any other file as it is.
"""

from __future__ import annotations

import hashlib
import json
import math
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

from cg.complete import EVAL_MAX_TOKENS, Request, complete, get_engine
from cg.engine import Engine, LogitsProcessor
from cg.errors import InputError, NoFimError, OutputExistsError, UsageError
from cg.evaluate.sandbox import Limits, run_program
from cg.evaluate.tasks import BENCHMARKS, Task, load, spread
from cg.report import progress_bar

# The usual HumanEval stop words (left-to-right generation); optional for infilling.
STOP_WORDS = ("\nclass", "\ndef", "\n#", "\nif")
PASS_AT = (1, 10, 100)

Record = dict[str, Any]
# What each result line holds, by type; --resume reads a file only if every line has them all.
RECORD_FIELDS: dict[str, type | tuple[type, ...]] = {
    "task_id": str, "completion": str, "sample": int, "passed": bool, "result": str, "completion_tokens": int,
    "stop_reason": str, "gen_seconds": (int, float), "score_seconds": (int, float), "run": str}
_LINE_START = b'{"task_id": '  # how json.dumps begins each record (task_id comes first)


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
    run: Request = field(default_factory=lambda: Request(max_tokens=EVAL_MAX_TOKENS, quiet=True))


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
             tasks: list[Task] | None = None, emit: Callable[[str], None] | None = None) -> Summary:
    """Run the benchmark; `processor_for(task)` may add a logits processor per task (tests, sampling hooks).
    emit: where result lines go with --out - (default: sys.stdout); the CLI passes its stdout
    writer, which ends cg quietly when the reader goes away."""
    if eo.n_samples > 1 and eo.run.sampling.temperature == 0 and not eo.self_check:
        raise UsageError("--n-samples above 1 needs --temperature above 0 (greedy samples are all alike)",
                         "Add e.g. --temperature 0.8, or drop --n-samples.")
    start = time.perf_counter()
    chosen = spread(tasks if tasks is not None else tasks_for(eo.benchmark), eo.limit)
    wanted = [(t, s) for t in chosen for s in range(eo.n_samples)]
    previous = _previous(eo)  # before the model loads: a file that is not cg's is refused at once
    model, model_id = "canonical solutions (--self-check)", "canonical"
    if not eo.self_check:
        engine = engine or get_engine(eo.run)
        model, model_id = engine.info.label, f"{engine.info.name} at {engine.info.server or 'local'}"
        if not engine.info.special.has_fim:
            raise NoFimError(f"{model} has no fill-in-the-middle tokens: HumanEval infilling measures FIM",
                             "Install CodeGemma (cg download codegemma-2b) or pass --model with a CodeGemma GGUF.")
    run_id = _run_id(eo, model_id)
    done = previous.resumed(run_id, {(t.task_id, s) for t, s in wanted}) if previous else {}
    pending = [(t, s) for t, s in wanted if (t.task_id, s) not in done]

    def generate(task: Task, sample: int) -> tuple[str, Record, float]:
        if eo.self_check:
            return task.canonical_solution, {"completion_tokens": 0, "stop_reason": "canonical", "run": run_id}, 0.0
        t0 = time.perf_counter()
        # Exact reuse only: a task's result must not depend on the tasks before it.
        request = replace(eo.run, exact=True, sampling=replace(eo.run.sampling, seed=eo.run.sampling.seed + sample),
                          require_fim=True, stop=STOP_WORDS if eo.stop_words else (),
                          logits_processor=processor_for(task) if processor_for else None)
        result = complete(task.prompt, task.suffix, request, engine)
        return result.text, {"completion_tokens": result.completion_tokens, "stop_reason": result.stop_reason,
                             "run": run_id}, time.perf_counter() - t0

    results: dict[tuple[str, int], Record] = dict(done)
    with _results_writer(eo, [(t.task_id, s) for t, s in pending], emit) as write, \
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


def _run_id(eo: EvalOptions, model: str) -> str:
    """A digest of what decides a run's results (not how many tasks, nor how parallel): every
    line carries it, and --resume continues only lines of the same run."""
    run = eo.run
    what = {"benchmark": str(eo.benchmark), "model": model, "self_check": eo.self_check,
            "stop_words": eo.stop_words, "repair_newline": eo.repair_newline, "limits": asdict(eo.limits),
            "sampling": asdict(run.sampling), "max_tokens": run.max_tokens, "n_ctx": run.n_ctx,
            "max_time": run.max_time, "max_prompt_tokens": run.max_prompt_tokens,
            "logit_bias": sorted((run.logit_bias or {}).items())}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class _Previous:
    """A results file cg wrote: its records (the last one of each task and sample), the runs
    they belong to, and how many bytes of whole lines it holds."""

    path: Path
    records: dict[tuple[str, int], Record]
    runs: set[str]
    whole: int
    size: int

    def resumed(self, run_id: str, wanted: set[tuple[str, int]]) -> dict[tuple[str, int], Record]:
        """The records to keep; the line an interruption cut is dropped (it is redone)."""
        if self.runs - {run_id}:
            raise InputError(f"{self.path} holds the results of another run (another model, benchmark or settings)",
                             "Resume it with the options it was made with; or pass --force to start over, "
                             "or another --out.")
        if self.whole < self.size:
            with open(self.path, "r+b") as f:
                f.truncate(self.whole)
        return {key: record for key, record in self.records.items() if key in wanted}


def _previous(eo: EvalOptions) -> _Previous | None:
    """The results already in --out (with --resume), checked to be a cg results file; refuses
    to overwrite an existing file without --resume or --force."""
    if eo.out is None or str(eo.out) == "-" or not eo.out.exists():
        return None
    if not eo.resume:
        if eo.force:
            return None
        raise OutputExistsError(f"{eo.out} already exists",
                                "Pass --resume to continue it, or --force to start over.")
    if not eo.out.is_file():
        raise InputError(f"{eo.out} is not a regular file", "Pass a results file to --out.")
    previous = _Previous(eo.out, {}, set(), 0, eo.out.stat().st_size)
    with open(eo.out, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.endswith(b"\n"):  # a line an interruption cut, if cg began it
                if not line.startswith(_LINE_START):
                    raise _not_results(eo.out, number, "its last line is not a result")
                break
            record = _record(line)
            if isinstance(record, str):
                raise _not_results(eo.out, number, record)
            previous.records[(record["task_id"], record["sample"])] = record
            previous.runs.add(record["run"])
            previous.whole += len(line)
    return previous


def _record(line: bytes) -> Record | str:
    """One result line, or why it is not one."""
    try:
        record = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        return "not UTF-8 text"
    except (ValueError, RecursionError):  # JSONDecodeError, an over-long number, deep nesting
        return "not JSON"
    if not isinstance(record, dict):
        return "not a JSON object"
    for name, kind in RECORD_FIELDS.items():
        value = record.get(name)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            return f"no {name!r}" if value is None else f"{name!r} is {json.dumps(value)[:40]}"
        if isinstance(value, float | int) and not isinstance(value, bool) and not (math.isfinite(value) and value >= 0):
            return f"{name!r} is {value}"
    return record


def _not_results(path: Path, number: int, why: str) -> InputError:
    return InputError(f"{path} is not a cg eval results file (line {number}: {why}); it was left as it is",
                      "Pass --force to overwrite it, or another --out.")


@contextmanager
def _results_writer(eo: EvalOptions, order: list[tuple[str, int]],
                    emit: Callable[[str], None] | None) -> Iterator[Callable[[Record], None]]:
    """Appends one JSON line per result in `order`, each flushed as soon as all before it are
    written (so --resume loses nothing and a parallel run writes a serial run's file)."""
    if eo.out is None:
        yield lambda _record: None
        return
    file = None
    if str(eo.out) == "-":
        line_out = emit or _to_stdout
    else:
        eo.out.parent.mkdir(parents=True, exist_ok=True)
        file = open(eo.out, "a" if eo.resume else "w", encoding="utf-8")  # noqa: SIM115 - closed below

        def line_out(line: str) -> None:
            file.write(line)
            file.flush()

    waiting: dict[tuple[str, int], Record] = {}
    position = 0

    def write(record: Record) -> None:
        nonlocal position
        waiting[(record["task_id"], record["sample"])] = record
        while position < len(order) and order[position] in waiting:
            line_out(json.dumps(waiting.pop(order[position]), ensure_ascii=False) + "\n")
            position += 1

    try:
        yield write
    finally:
        if file is not None:
            file.close()


def _to_stdout(line: str) -> None:
    sys.stdout.write(line)
    sys.stdout.flush()


def default_jobs() -> int:
    return max(1, min(4, (os.cpu_count() or 2) - 1))
