"""`cg eval humaneval-infill`: task builder, sandboxed scorer, resume, and a run through real decoding."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest

from cg.cli import main
from cg.evaluate import humaneval
from cg.evaluate.humaneval import EvalOptions, evaluate
from cg.evaluate.sandbox import Limits, run_program
from cg.evaluate.tasks import build, load_problems, spread

from .helpers import ID, forcing


@pytest.fixture(scope="module")
def problems():
    return load_problems()


@pytest.fixture(scope="module")
def single(problems):
    return build("single-line", problems)


def test_task_counts_match_the_published_benchmark(problems, single):
    multi = build("multi-line", problems)
    assert (len(problems), len(single), len(multi)) == (164, 1033, 5815)
    assert len({t.task_id for t in single}) == 1033 and len({t.task_id for t in multi}) == 5815


def test_each_task_puts_the_canonical_solution_back_together(problems, single):
    by_id = {p["task_id"]: p for p in problems}
    for task in single[::37] + build("multi-line", problems)[::211]:
        p = by_id[task.problem_id]
        assert task.prefix + task.canonical + task.suffix == p["prompt"] + p["canonical_solution"]
        assert (task.canonical.strip() and task.canonical.endswith("\n")) or not task.suffix


def test_self_check_on_a_sample_scores_100_percent(capsys):
    code = main(["eval", "humaneval-infill", "--self-check", "-b", "multi-line", "--limit", "12", "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and (summary["tasks"], summary["passed"], summary["pass_at_1"]) == (12, 12, 1.0)


def test_a_wrong_completion_fails(single):
    task = next(t for t in single if t.canonical.startswith("    return ") and not t.suffix.strip())
    outcome = run_program(task.program("    return None\n"))
    assert not outcome.passed and outcome.result.startswith("failed: AssertionError")
    assert run_program(task.program(task.canonical)).passed


def test_a_looping_completion_times_out_and_a_greedy_one_hits_the_memory_limit(single):
    task = next(t for t in single if t.canonical.startswith("    return ") and not t.suffix.strip())
    start = time.perf_counter()
    outcome = run_program(task.program("    while True: pass\n"), Limits(timeout=1.0))
    assert outcome.result == "timed out" and time.perf_counter() - start < 5
    outcome = run_program(task.program("    x = bytearray(8 * 2**30)\n"), Limits(timeout=5, memory_mb=256))
    assert outcome.result == "failed: MemoryError"


def test_the_program_cannot_touch_the_callers_folder(tmp_path, monkeypatch, single):
    monkeypatch.chdir(tmp_path)
    run_program("open('left-behind.txt', 'w').write('x')\n")
    assert list(tmp_path.iterdir()) == []


def canonical_forcer(engine):
    """Through real decoding: llama.cpp's sampler is pushed to each task's canonical text, then the end."""
    return lambda task: forcing([*engine.tokenize_text(task.canonical), ID["fim_sep"]])


def test_end_to_end_through_real_decoding_and_resume(tiny_engine, tiny_opts, single, tmp_path):
    out = tmp_path / "results.jsonl"
    tasks = spread(single, 3)
    eo = EvalOptions(limit=None, jobs=2, out=out, run=dataclasses.replace(tiny_opts, max_tokens=64))
    summary = evaluate(eo, engine=tiny_engine, processor_for=canonical_forcer(tiny_engine), tasks=tasks)
    assert (summary.tasks, summary.passed, summary.resumed) == (3, 3, 0)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["task_id"] for r in records] == [t.task_id for t in tasks]
    assert all(r["completion"].rstrip("\n") == t.canonical.rstrip("\n") for r, t in zip(records, tasks, strict=True))
    assert all(r["stop_reason"] == "stop_token" and r["completion_tokens"] > 0 for r in records)
    # Interrupted in the middle of writing line 2: --resume keeps line 1 and redoes the rest.
    out.write_text(out.read_text().splitlines(keepends=True)[0] + '{"task_id": "Single')
    with pytest.raises(Exception, match="already exists"):
        evaluate(eo, engine=tiny_engine, tasks=tasks)
    eo.resume = True
    summary = evaluate(eo, engine=tiny_engine, processor_for=canonical_forcer(tiny_engine), tasks=tasks)
    assert (summary.tasks, summary.passed, summary.resumed) == (3, 3, 1)
    assert [json.loads(line)["task_id"] for line in out.read_text().splitlines()] == [t.task_id for t in tasks]


def test_unforced_tiny_model_is_scored_not_crashed(tiny_engine, tiny_opts, single):
    summary = evaluate(EvalOptions(jobs=1, run=tiny_opts), engine=tiny_engine, tasks=spread(single, 2))
    assert summary.tasks == 2 and summary.passed == 0  # random weights do not solve HumanEval


def test_cli_errors(capsys, tmp_path):
    out = tmp_path / "r.jsonl"
    out.write_text("")
    assert main(["eval", "humaneval-infill", "--self-check", "-o", str(out)]) == 2
    assert capsys.readouterr().err.startswith(f"Error: {out} already exists")
    assert main(["eval", "humaneval-infill", "--resume"]) == 2
    assert main(["eval", "humaneval-infill", "--self-check", "-b", "random-span"]) == 2
    assert capsys.readouterr().err.splitlines()[-2].startswith("Error: unknown benchmark 'random-span'")


def test_a_model_without_fim_is_refused(capsys, bundled_gguf):
    code = main(["eval", "humaneval-infill", "--limit", "1", "--model", str(bundled_gguf)])
    assert code == 2 and "has no fill-in-the-middle tokens" in capsys.readouterr().err


def test_stop_words_are_the_usual_ones():
    assert humaneval.STOP_WORDS == ("\nclass", "\ndef", "\n#", "\nif")
