"""HumanEval infilling tasks: the four published files (Bavarian et al. 2022, "Efficient Training
of Language Models to Fill in the Middle"; the sets the CodeGemma report scores), shipped in
cg/evaluate/data with their MIT license and read byte for byte.

Each line: task_id, entry_point, prompt (the text before the gap), suffix, canonical_solution
(the gap's text) and test. The official harness scores a completion by running
`prompt + completion + suffix + "\\n" + test + "\\n" + f"check({entry_point})"` as it is.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import asdict, dataclass
from enum import StrEnum
from importlib import resources
from typing import Any


class Benchmark(StrEnum):
    SINGLE_LINE = "single-line"
    MULTI_LINE = "multi-line"
    RANDOM_SPAN = "random-span"
    RANDOM_SPAN_LIGHT = "random-span-light"


BENCHMARKS = {
    Benchmark.SINGLE_LINE: "HumanEval-SingleLineInfilling.jsonl.gz",  # 1033 tasks
    Benchmark.MULTI_LINE: "HumanEval-MultiLineInfilling.jsonl.gz",  # 5815
    Benchmark.RANDOM_SPAN: "HumanEval-RandomSpanInfilling.jsonl.gz",  # 1640
    Benchmark.RANDOM_SPAN_LIGHT: "HumanEval-RandomSpanInfillingLight.jsonl.gz",  # 164
}


@dataclass(frozen=True)
class Task:
    """One published line; the field order is the files' own."""

    task_id: str
    entry_point: str
    prompt: str
    suffix: str
    canonical_solution: str
    test: str

    def program(self, completion: str, *, repair_newline: bool = False) -> str:
        """The program the official harness runs. With repair_newline (cg's opt-in, named in the
        summary), a completion that fills whole lines but lacks its last line break gets one."""
        if repair_newline and self.prompt.endswith("\n") and completion and not completion.endswith("\n"):
            completion += "\n"
        return self.prompt + completion + self.suffix + "\n" + self.test + "\n" + f"check({self.entry_point})"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def raw_lines(benchmark: str) -> bytes:
    """The published file's content, decompressed."""
    data = resources.files(__package__).joinpath("data", BENCHMARKS[Benchmark(benchmark)]).read_bytes()
    return gzip.decompress(data)


def load(benchmark: str) -> list[Task]:
    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}")
    return [Task(**json.loads(line)) for line in raw_lines(benchmark).decode("utf-8").splitlines() if line]


def export_lines(tasks: list[Task]) -> bytes:
    """Tasks in the published schema and serialization (json.dumps, one per line)."""
    return "".join(json.dumps(t.to_json()) + "\n" for t in tasks).encode("utf-8")


def spread(tasks: list[Task], limit: int | None) -> list[Task]:
    """`limit` tasks spread evenly over the set (the same limit always picks the same tasks)."""
    if limit is None or limit >= len(tasks):
        return tasks
    step = len(tasks) / limit
    return [tasks[int(i * step)] for i in range(limit)]
