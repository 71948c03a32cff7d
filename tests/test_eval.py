"""`cg eval humaneval-infill`: the published task files byte for byte, official scoring, pass@k,
the sandbox, resume, and a run through real decoding."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import math
import os
import subprocess
import sys
import time
from importlib import resources

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cg.cli import main
from cg.engine import Sampling
from cg.errors import OutputExistsError, UsageError
from cg.evaluate.humaneval import EvalOptions, evaluate, pass_at_k
from cg.evaluate.sandbox import SPARE_TASKS, Limits, run_program
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
    assert main(["eval", "export", str(out), "-b", benchmark]) == 0
    assert out.read_bytes() == raw_lines(benchmark)


def test_the_hidden_aliases_are_gone(tmp_path, capsys):
    """`cg eval humaneval-infill --export`, `cg infill --check` and `--null` were kept hidden in
    0.1.0 beside `cg eval export` and `cg check`: one way to do each thing now."""
    out = tmp_path / "tasks.jsonl"
    assert main(["eval", "humaneval-infill", "--export", str(out)]) == 2 and not out.exists()
    assert "No such option '--export'" in capsys.readouterr().err
    assert main(["infill", "--check", str(out)]) == 2
    assert "No such option '--check'" in capsys.readouterr().err
    assert main(["infill", "--null", str(out)]) == 2


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


LEAVERS = {
    # A child in a session of its own (out of the program's process group), the program still running.
    "setsid, timed out": "p = subprocess.Popen(['sleep', '61'], start_new_session=True)\nsave(p.pid)\ntime.sleep(60)\n",
    # The same, the program ending at once (and passing).
    "setsid, passed": "p = subprocess.Popen(['sleep', '61'], start_new_session=True)\nsave(p.pid)\n",
    # A daemon: fork, setsid, fork again; its parents are gone before the program ends.
    "double fork": ("if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        save(os.getpid())\n"
                    "        os.execvp('sleep', ['sleep', '61'])\n    os._exit(0)\nos.wait()\n"
                    "while not os.path.exists(PID):\n    time.sleep(0.01)\n"),
}


def _sleeping(pid: int) -> bool:
    """pid is still one of the test's `sleep 61` processes (not gone, not a reused pid)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read() == b"sleep\x0061\x00"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the subreaper and /proc are Linux's")
@pytest.mark.parametrize("case", list(LEAVERS))
def test_no_process_a_program_starts_outlives_it(tmp_path, case):
    pid_file = tmp_path / "pid"
    program = (f"import os, subprocess, time\nPID = {str(pid_file)!r}\n"
               "def save(pid):\n    open(PID + '.tmp', 'w').write(str(pid))\n    os.replace(PID + '.tmp', PID)\n"
               + LEAVERS[case])
    outcome = run_program(program, Limits(timeout=3))
    assert outcome.result == ("timed out" if "timed out" in case else "passed")
    pid = int(pid_file.read_text())
    try:
        deadline = time.monotonic() + 30  # a hang guard only: the sweep is done when run_program returns
        while _sleeping(pid):
            assert time.monotonic() < deadline, f"the {case} child {pid} outlived the program"
            time.sleep(0.05)
    finally:
        if _sleeping(pid):
            os.kill(pid, 9)


def test_a_program_may_start_only_a_bounded_number_of_processes():
    """RLIMIT_NPROC counts all the user's tasks: the program may add at most SPARE_TASKS (the
    kernel enforces it for every user but root)."""
    program = f"""import os, resource
soft, hard = resource.getrlimit(resource.RLIMIT_NPROC)
uid, mine = os.getuid(), 0
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        if os.stat("/proc/" + pid).st_uid == uid:
            mine += int(open(f"/proc/{{pid}}/stat").read().rsplit(")", 1)[1].split()[17])
    except OSError:
        pass
assert soft == hard != resource.RLIM_INFINITY, (soft, hard)
assert soft - mine <= {SPARE_TASKS} + 64, (soft, mine)
"""
    outcome = run_program(program)
    assert outcome.passed, outcome.result


def test_a_reader_that_goes_away_ends_eval_quietly(tmp_path):
    """`cg eval ... -o - | head -1`: exit 0 and nothing on stderr, as every other command. The
    whole set is asked for so that its lines overfill the pipe: cg is still writing when the
    reader goes."""
    env = {**os.environ, "CG_HOME": str(tmp_path / "home")}
    proc = subprocess.Popen([sys.executable, "-m", "cg", "eval", "humaneval-infill", "--self-check", "-o", "-"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        first = json.loads(proc.stdout.readline())
        proc.stdout.close()
        err = proc.stderr.read()
        proc.wait(timeout=120)
    finally:
        proc.kill()
    assert first["passed"] and (proc.returncode, err) == (0, b"")


SELF_CHECK = ["eval", "humaneval-infill", "--self-check", "-b", "random-span-light", "--jobs", "1"]


@pytest.fixture(scope="module")
def result_line(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("results") / "r.jsonl"
    assert main([*SELF_CHECK, "--limit", "1", "-o", str(out)]) == 0
    return json.loads(out.read_text())


def _line(record: dict) -> bytes:
    return json.dumps(record).encode() + b"\n"


HOSTILE = {
    "no passed": (lambda r: _line({k: v for k, v in r.items() if k != "passed"}), "line 1: no 'passed'"),
    "passed is a string": (lambda r: _line({**r, "passed": "no"}), "line 1: 'passed' is \"no\""),
    "not UTF-8": (lambda r: _line(r) + b'{"task_id": "\xff\xfe"}\n', "line 2: not UTF-8 text"),
    "notes": (lambda r: b"my notes\nthe last line, unterminated", "line 1: not JSON"),
    "one unterminated line": (lambda r: b"the only line", "line 1: its last line is not a result"),
    "a result, then notes": (lambda r: _line(r) + b"todo: more", "line 2: its last line is not a result"),
    "an array": (lambda r: b"[1, 2]\n", "line 1: not a JSON object"),
    "NaN seconds": (lambda r: _line(r).replace(b'"gen_seconds": 0.0', b'"gen_seconds": NaN'),
                    "line 1: 'gen_seconds' is nan"),
    "sample is true": (lambda r: _line({**r, "sample": True}), "line 1: 'sample' is true"),
    "deep nesting": (lambda r: b"[" * 100_000 + b"]" * 100_000 + b"\n", "line 1: not JSON"),
    "a huge number": (lambda r: _line(r).replace(b'"sample": 0', b'"sample": ' + b"9" * 5000), "line 1: not JSON"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_resume_refuses_a_file_that_is_not_cgs_and_leaves_it_as_it_is(tmp_path, capsys, result_line, case):
    make, why = HOSTILE[case]
    out = tmp_path / "r.jsonl"
    out.write_bytes(content := make(result_line))
    code = main([*SELF_CHECK, "--limit", "2", "-o", str(out), "--resume"])
    first = capsys.readouterr().err.splitlines()[0]
    assert code == 2 and first.startswith(f"Error: {out} is not a cg eval results file ({why}")
    assert out.read_bytes() == content


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(min_size=1, max_size=300))
def test_resume_never_rewrites_a_file_it_did_not_write(tmp_path, capsys, content):
    assume(not content.startswith(b'{"task_id": '))
    out = tmp_path / "any.jsonl"
    out.write_bytes(content)
    assert main([*SELF_CHECK, "--limit", "1", "-o", str(out), "--resume"]) == 2
    assert out.read_bytes() == content
    assert capsys.readouterr().err.startswith(f"Error: {out} is not a cg eval results file")


@pytest.mark.parametrize("other", [["--repair-newline"], ["--timeout", "5"], ["-b", "single-line"]])
def test_resume_refuses_the_results_of_another_run(tmp_path, capsys, other):
    out = tmp_path / "r.jsonl"
    assert main([*SELF_CHECK, "--limit", "2", "-o", str(out)]) == 0
    content = out.read_bytes()[:-10]  # interrupted in the last line: still not rewritten
    out.write_bytes(content)
    capsys.readouterr()
    assert main([*SELF_CHECK, "--limit", "2", "-o", str(out), "--resume", *other]) == 2
    assert capsys.readouterr().err.startswith(f"Error: {out} holds the results of another run")
    assert out.read_bytes() == content
    # The same options continue it: the cut line is redone, the first one kept.
    assert main([*SELF_CHECK, "--limit", "3", "-o", str(out), "--resume", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["tasks"], summary["passed"], summary["resumed"]) == (3, 3, 1)
    assert len(out.read_text().splitlines()) == 3


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
