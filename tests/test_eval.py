"""`cg eval humaneval-infill`: the published task files byte for byte, official scoring, pass@k,
the sandbox, resume, and a run through real decoding."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import math
import time
from importlib import resources

import pytest

from cg.cli import main
from cg.engine import Sampling
from cg.errors import OutputExistsError, UsageError
from cg.evaluate.humaneval import EvalOptions, evaluate, pass_at_k
from cg.evaluate.sandbox import Limits, run_program
from cg.evaluate.tasks import BENCHMARKS, Task, load, raw_lines, spread

from .helpers import ID, forcing

# The published files (openai/human-eval-infilling @ 88062ff): sha256 and task count.
PUBLISHED = {
    "single-line": ("1277073e7ddce163", 1033),
    "multi-line": ("2f341612eee1d35d", 5815),
    "random-span": ("b4f330d8a8ff97bf", 1640),
    "random-span-light": ("1432250ecac0cb56", 164),
}


@pytest.fixture(scope="module")
def single() -> list[Task]:
    return load("single-line")


@pytest.mark.parametrize("benchmark", list(PUBLISHED))
def test_tasks_are_the_published_lines(benchmark):
    packaged = resources.files("cg.evaluate").joinpath("data", BENCHMARKS[benchmark]).read_bytes()
    digest, count = PUBLISHED[benchmark]
    assert hashlib.sha256(packaged).hexdigest().startswith(digest)
    lines = gzip.decompress(packaged).decode("utf-8").splitlines()
    tasks = load(benchmark)
    assert len(tasks) == len(lines) == count
    fields = ["task_id", "entry_point", "prompt", "suffix", "canonical_solution", "test"]
    for task, line in zip(tasks, lines, strict=True):
        published = json.loads(line)
        assert list(published) == fields and task.to_json() == published


def test_the_license_ships_with_the_data():
    text = resources.files("cg.evaluate").joinpath("data", "LICENSE").read_text()
    assert text.startswith("The MIT License") and "OpenAI" in text


@pytest.mark.parametrize("benchmark", list(PUBLISHED))
def test_export_round_trips_byte_for_byte(benchmark, tmp_path):
    out = tmp_path / "tasks.jsonl"
    assert main(["eval", "humaneval-infill", "-b", benchmark, "--export", str(out)]) == 0
    assert out.read_bytes() == raw_lines(benchmark)


@pytest.mark.parametrize("benchmark", list(PUBLISHED))
def test_self_check_scores_every_task_under_the_official_construction(benchmark, capsys):
    code = main(["eval", "humaneval-infill", "--self-check", "-b", benchmark, "--json", "--jobs", "2"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["tasks"] == summary["passed"] == PUBLISHED[benchmark][1]
    assert summary["pass_at_1"] == 1.0 and summary["scoring"].startswith("official")


def test_the_program_is_the_official_one(single):
    task = single[0]
    program = task.program("X")
    assert program == task.prompt + "X" + task.suffix + "\n" + task.test + "\n" + f"check({task.entry_point})"


def test_a_missing_final_newline_fails_as_officially_and_passes_with_the_repair(single):
    task = next(t for t in single if t.canonical_solution.endswith("\n") and t.suffix.strip())
    answer = task.canonical_solution.rstrip("\n")
    assert not run_program(task.program(answer)).passed  # the line runs into the suffix's first line
    assert run_program(task.program(answer, repair_newline=True)).passed
    # cg's repair only ends lines: a random span that stops mid-line is left alone.
    span = next(t for t in load("random-span-light") if not t.prompt.endswith("\n"))
    assert span.program("x", repair_newline=True) == span.program("x")


def test_repair_is_named_in_the_summary(capsys):
    args = ["eval", "humaneval-infill", "--self-check", "-b", "random-span-light", "--limit", "3", "--json"]
    assert main([*args, "--repair-newline"]) == 0
    assert json.loads(capsys.readouterr().out)["scoring"] == "official + cg's newline repair (--repair-newline)"


def test_pass_at_k_is_the_unbiased_estimator():
    for n, c, k in [(10, 3, 1), (10, 3, 5), (20, 0, 10), (5, 5, 2), (100, 37, 10)]:
        assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k))


def test_a_wrong_completion_fails(single):
    task = next(t for t in single if t.canonical_solution.startswith("    return ") and not t.suffix.strip())
    outcome = run_program(task.program("    return None\n"))
    assert not outcome.passed and outcome.result.startswith("failed: AssertionError")
    assert run_program(task.program(task.canonical_solution)).passed


def test_a_looping_completion_times_out_and_a_greedy_one_hits_the_memory_limit(single):
    task = next(t for t in single if t.canonical_solution.startswith("    return ") and not t.suffix.strip())
    start = time.perf_counter()
    outcome = run_program(task.program("    while True: pass\n"), Limits(timeout=1.0))
    assert outcome.result == "timed out" and time.perf_counter() - start < 5
    outcome = run_program(task.program("    x = bytearray(8 * 2**30)\n"), Limits(timeout=5, memory_mb=256))
    assert outcome.result == "failed: MemoryError"


def test_the_program_cannot_touch_the_callers_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_program("open('left-behind.txt', 'w').write('x')\n")
    assert list(tmp_path.iterdir()) == []


def canonical_forcer(engine):
    """Through real decoding: llama.cpp's sampler is pushed to each task's canonical text, then the end."""
    return lambda task: forcing([*engine.tokenize_text(task.canonical_solution), ID["fim_sep"]])


def test_end_to_end_through_real_decoding_and_resume(tiny_engine, tiny_opts, single, tmp_path):
    out = tmp_path / "results.jsonl"
    tasks = spread(single, 3)
    eo = EvalOptions(limit=None, jobs=2, out=out, run=dataclasses.replace(tiny_opts, max_tokens=64))
    summary = evaluate(eo, engine=tiny_engine, processor_for=canonical_forcer(tiny_engine), tasks=tasks)
    assert (summary.tasks, summary.passed, summary.resumed) == (3, 3, 0)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["task_id"] for r in records] == [t.task_id for t in tasks]
    # Each line is also an official sample: task_id and completion, as the harness reads them.
    assert all(r["completion"] == t.canonical_solution for r, t in zip(records, tasks, strict=True))
    assert all(r["stop_reason"] == "stop_token" and r["completion_tokens"] > 0 for r in records)
    # Interrupted in the middle of writing line 2: --resume keeps line 1 and redoes the rest.
    out.write_text(out.read_text().splitlines(keepends=True)[0] + '{"task_id": "Single')
    with pytest.raises(OutputExistsError, match="already exists"):
        evaluate(eo, engine=tiny_engine, tasks=tasks)
    eo.resume = True
    summary = evaluate(eo, engine=tiny_engine, processor_for=canonical_forcer(tiny_engine), tasks=tasks)
    assert (summary.tasks, summary.passed, summary.resumed) == (3, 3, 1)
    assert [json.loads(line)["task_id"] for line in out.read_text().splitlines()] == [t.task_id for t in tasks]


def test_several_samples_give_pass_at_k(tiny_engine, tiny_opts, single, tmp_path):
    out = tmp_path / "samples.jsonl"
    run = dataclasses.replace(tiny_opts, max_tokens=24, sampling=Sampling(temperature=0.8))
    eo = EvalOptions(jobs=2, out=out, n_samples=3, run=run)
    tasks = spread(single, 2)
    summary = evaluate(eo, engine=tiny_engine, tasks=tasks)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["task_id"], r["sample"]) for r in records] == [(t.task_id, s) for t in tasks for s in range(3)]
    assert summary.samples == 3 and set(summary.pass_at_k) == {"pass@1"} and summary.passed == 0
    with pytest.raises(UsageError, match="needs --temperature above 0"):
        evaluate(dataclasses.replace(eo, run=tiny_opts, out=None), engine=tiny_engine, tasks=tasks)


def test_unforced_tiny_model_is_scored_not_crashed(tiny_engine, tiny_opts, single):
    summary = evaluate(EvalOptions(jobs=1, run=tiny_opts), engine=tiny_engine, tasks=spread(single, 2))
    assert summary.tasks == 2 and summary.passed == 0  # random weights do not solve HumanEval


def test_cli_errors(capsys, tmp_path):
    out = tmp_path / "r.jsonl"
    out.write_text("")
    assert main(["eval", "humaneval-infill", "--self-check", "-o", str(out)]) == 2
    assert capsys.readouterr().err.startswith(f"Error: {out} already exists")
    assert main(["eval", "humaneval-infill", "--resume"]) == 2
    assert main(["eval", "humaneval-infill", "--self-check", "-b", "random-spans"]) == 2
    assert "Invalid value for '--benchmark'" in capsys.readouterr().err


def test_a_model_without_fim_is_refused(capsys, bundled_gguf):
    code = main(["eval", "humaneval-infill", "--limit", "1", "--model", str(bundled_gguf)])
    assert code == 2 and "has no fill-in-the-middle tokens" in capsys.readouterr().err


@pytest.mark.parametrize("word", ["class", "def", "#", "if"])
def test_stop_words_end_a_completion_at_each_usual_word(tiny_engine, tiny_opts, single, tmp_path, word):
    """--stop-words: the canonical answer, then a new line starting with one of HumanEval's usual
    stop words (through real decoding): the completion ends before that line, on the word."""
    task = single[0]
    rest = f"\n{word} x = 1\n"

    def forcer(t):
        return forcing([*tiny_engine.tokenize_text(t.canonical_solution.rstrip("\n") + rest), ID["fim_sep"]])

    run = dataclasses.replace(tiny_opts, max_tokens=96)
    with_words = evaluate(EvalOptions(jobs=1, out=tmp_path / "a.jsonl", stop_words=True, run=run),
                          engine=tiny_engine, processor_for=forcer, tasks=[task])
    plain = evaluate(EvalOptions(jobs=1, out=tmp_path / "b.jsonl", run=run), engine=tiny_engine,
                     processor_for=forcer, tasks=[task])
    stopped = json.loads((tmp_path / "a.jsonl").read_text())
    ran_on = json.loads((tmp_path / "b.jsonl").read_text())
    assert stopped["completion"].rstrip("\n") == task.canonical_solution.rstrip("\n")
    # Without them, the block rule ends it at the same line: the stop word is what ended the first.
    assert stopped["stop_reason"] == "stop_token" and ran_on["stop_reason"] == "end_of_block"
    assert with_words.tasks == plain.tasks == 1
