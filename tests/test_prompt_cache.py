"""Prompt reuse across calls and processes: the exact path (bit for bit a fresh run), splices
after a change (close to a fresh run, far fewer tokens evaluated), the on-disk cache and its
damaged or foreign entries, and a model whose cache cannot be shifted."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from unittest.mock import ANY

import numpy as np
import pytest

from cg.engine import Timings
from cg.engine.local import engine as local
from cg.engine.local import reuse

from .helpers import NO_STOPS, NO_STOPS_BIAS, first_logits


def _lines(n: int) -> list[str]:
    return [f"def f{i}(x):\n    return x * {i} + {i * 7 % 13}\n\n" for i in range(n)]


def _file(body_lines: int, cursor_line: str, at: int | None = None) -> str:
    lines = _lines(body_lines)
    at = body_lines * 2 // 3 if at is None else at
    return "".join(lines[:at]) + cursor_line + "<CURSOR>\n" + "".join(lines[at:])


@pytest.fixture()
def run(tiny_gguf, tmp_path):
    def complete(text: str, *extra: str, **env) -> dict:
        proc = subprocess.run([sys.executable, "-m", "cg", "complete", "-m", str(tiny_gguf), "--json", "-n", "6",
                               "--ctx", "2048", *NO_STOPS, *extra], input=text, capture_output=True, text=True,
                              timeout=120, env={**os.environ, "CG_HOME": str(tmp_path / "home"), **env})
        assert proc.returncode == 0, proc.stderr
        data = json.loads(proc.stdout)
        data["stderr"] = proc.stderr
        return data

    return complete


def test_exact_reuse_in_a_second_process_prints_the_same(run):
    text = _file(45, "")
    first, second = run(text, "--exact"), run(text, "--exact")
    assert first["prompt_tokens"] >= 256 and first["timings"]["cached_tokens"] == 0
    # Whole 128-token batches are reused (so the output is bit-for-bit a fresh run's).
    assert second["timings"]["cached_tokens"] == (second["prompt_tokens"] - 1) // 128 * 128 > 0
    assert second["timings"]["reuse"] == "prefix" and second["timings"]["spliced_tokens"] == 0
    assert second["text"] == first["text"]
    # An infill further down the same file shares the part before the cursor.
    other = _file(45, "def g(y):\n")
    third = run(other, CG_EXACT="1")
    cached = third["timings"]["cached_tokens"]
    assert cached % 128 == 0 and 256 <= cached < third["prompt_tokens"] - 1
    assert third["text"] == run(other, CG_PROMPT_CACHE="0")["text"]
    assert run(other, CG_PROMPT_CACHE="0")["timings"]["cached_tokens"] == 0


def test_a_second_process_two_lines_down_evaluates_a_few_tokens(run):
    first = run(_file(60, "", at=30))
    moved = run(_file(60, "", at=31))  # one function (3 lines) further down; splicing is the default
    t = moved["timings"]
    assert first["timings"]["reuse"] == "none" and t["reuse"] == "splice", moved["stderr"]
    assert t["evaluated_tokens"] <= 3 * 12 + reuse.FRESH + 4 and t["spliced_tokens"] > 0
    assert t["cached_tokens"] + t["evaluated_tokens"] == moved["prompt_tokens"]
    assert run(_file(60, "", at=31), CG_SPLICE="1")["timings"] == {**t, "disk_cache_ms": ANY, "prompt_ms": ANY,
                                                                   "generation_ms": ANY, "load_ms": ANY}
    # The exact path (CG_EXACT=1) on the same step: bit for bit a fresh run, and pays for it.
    exact = run(_file(60, "", at=31), CG_EXACT="1")
    assert exact["timings"]["reuse"] != "splice" and exact["timings"]["spliced_tokens"] == 0
    assert exact["text"] == run(_file(60, "", at=31), CG_PROMPT_CACHE="0")["text"]
    assert exact["timings"]["evaluated_tokens"] > t["evaluated_tokens"] + 100


def _first_logits(engine, prompt: list[int], *, exact: bool) -> tuple[np.ndarray, Timings]:
    return first_logits(engine, prompt, exact=exact, logit_bias=NO_STOPS_BIAS)


def test_logits_after_a_splice_are_close_to_a_fresh_evaluation(tiny_gguf):
    """Real decoding on the tiny model: a line inserted above the cursor. The spliced prompt's
    first logits are within a small tolerance of a fresh evaluation's; the exact path's equal them."""
    engine = local.load(tiny_gguf, n_ctx=2048, n_threads=2)
    assert engine.kv.can_shift
    lines = _lines(70)
    old_text = "".join(lines)
    new_text = "".join([*lines[:20], "x = compute(1, 2)  # a new line\n", *lines[20:]])
    old = [engine.info.bos, *engine.tokenize_text(old_text)]
    new = [engine.info.bos, *engine.tokenize_text(new_text)]
    engine.kv.clear()
    fresh, _ = _first_logits(engine, new, exact=True)
    engine.kv.clear()
    _first_logits(engine, old, exact=True)
    spliced, t = _first_logits(engine, new, exact=False)
    assert t.reuse == "splice" and t.evaluated_tokens < 60 and t.spliced_tokens > 500
    scale = np.abs(fresh).max()
    assert 0 < np.abs(spliced - fresh).max() <= 0.05 * scale  # close, and not merely the same numbers
    assert int(np.argmax(spliced)) == int(np.argmax(fresh))
    engine.kv.clear()
    _first_logits(engine, old, exact=True)
    again, t = _first_logits(engine, new, exact=True)
    assert t.reuse == "prefix" and np.array_equal(again, fresh)
    engine.llm.close()


def test_a_spliced_state_is_spliced_again_and_exact_reuse_keeps_to_its_exact_part(tiny_gguf):
    """Several targets in one process: each prompt splices from the last, spliced or not. Exact
    reuse after a splice keeps only the cells before the splice's first change."""
    engine = local.load(tiny_gguf, n_ctx=2048, n_threads=2)
    lines = _lines(70)
    texts = ["".join(lines), "".join([*lines[:20], "x = 1\n", *lines[20:]]),
             "".join([*lines[:20], "x = 1\n", *lines[20:40], "y = 2\n", *lines[40:]])]
    prompts = [[engine.info.bos, *engine.tokenize_text(t)] for t in texts]
    first_change = reuse.common_prefix(prompts[0], prompts[1])
    engine.kv.clear()
    fresh, _ = _first_logits(engine, prompts[2], exact=True)
    engine.kv.clear()
    _first_logits(engine, prompts[0], exact=True)
    _, t = _first_logits(engine, prompts[1], exact=False)
    assert t.reuse == "splice"
    spliced, t = _first_logits(engine, prompts[2], exact=False)
    assert t.reuse == "splice" and t.evaluated_tokens < 60 and t.spliced_tokens > 300
    assert np.abs(spliced - fresh).max() <= 0.05 * np.abs(fresh).max()
    assert int(np.argmax(spliced)) == int(np.argmax(fresh))
    again, t = _first_logits(engine, prompts[2], exact=True)
    assert 0 < t.cached_tokens <= first_change and t.spliced_tokens == 0
    assert np.array_equal(again, fresh)
    engine.llm.close()



def test_a_third_splice_in_a_row_is_refused_and_leaves_an_exact_state(tiny_gguf):
    """Issue 32: from the fourth splice of a chain on, some chains lost a line that a fresh run
    got (benchmarks/README.md, section 6). After SPLICE_DEPTH splices in a row the next prompt
    reuses only the exact prefix (reuse "refresh"): bit for bit a fresh run, and the chain starts
    again from an exact state."""
    from cg.settings import SPLICE_DEPTH

    engine = local.load(tiny_gguf, n_ctx=2048, n_threads=2)
    kv, lines = engine.kv, _lines(70)
    edits = [lines]
    for at in (10, 25, 40, 55, 62):  # a line inserted further down each time
        edits.append([*edits[-1][:at], f"v{at} = {at}\n", *edits[-1][at:]])
    prompts = [[engine.info.bos, *engine.tokenize_text("".join(e))] for e in edits]
    kv.clear()
    _first_logits(engine, prompts[0], exact=True)
    assert kv.splice_depth == 0 and SPLICE_DEPTH == 2
    seen = []
    for prompt in prompts[1:]:
        logits, t = _first_logits(engine, prompt, exact=False)
        seen.append((t.reuse, kv.splice_depth))
        if t.reuse == "refresh":
            assert kv.exact_upto == len(prompt) and t.spliced_tokens == 0 and t.cached_tokens > 0
            held = list(kv.main.tokens)
            kv.clear()
            fresh, _ = _first_logits(engine, prompt, exact=True)
            assert np.array_equal(logits, fresh)
            kv.clear()
            _first_logits(engine, held, exact=True)  # the exact state again, to go on from
    assert seen == [("splice", 1), ("splice", 2), ("refresh", 0), ("splice", 1), ("splice", 2)]
    # A state read from memory that exact reuse left, or a restore, is exact: depth 0.
    kv.clear()
    assert kv.splice_depth == 0
    engine.llm.close()

def test_a_model_whose_cache_cannot_shift_reuses_the_prefix_only(bundled_gguf):
    """Gemma 3 with a sliding-window cache sized to the window: llama.cpp cannot move its cells."""
    engine = local.load(bundled_gguf, n_ctx=2048, n_threads=2, swa_full=False)
    assert not engine.kv.can_shift
    old = [engine.info.bos, *engine.tokenize_text("".join(_lines(40)))]
    new = [engine.info.bos, *engine.tokenize_text("".join(["# top\n", *_lines(40)]))]
    _first_logits(engine, [*old[:300], *old[310:]], exact=True)
    _, t = _first_logits(engine, [*old[:300], 5, 6, *old[310:]], exact=False)
    assert t.reuse == "prefix" and t.spliced_tokens == 0 and t.cached_tokens % 128 == 0
    _, t = _first_logits(engine, new, exact=False)
    assert t.reuse == "none"
    engine.llm.close()


def _entry(tmp_path):
    [folder] = (tmp_path / "home" / "prompt-cache").iterdir()
    [kv] = folder.glob("*.kv")
    return folder, kv


@pytest.mark.parametrize("damage", ["nan-tail", "truncated-kv", "truncated-tokens", "garbage-header"])
def test_a_damaged_entry_is_removed_with_one_warning_and_never_used(run, tmp_path, damage):
    text = _file(45, "")
    fresh = run(text, CG_PROMPT_CACHE="0")
    run(text)
    folder, kv = _entry(tmp_path)
    index = kv.with_suffix(".tokens")
    data = kv.read_bytes()
    if damage == "nan-tail":  # what made every later completion "" before
        kv.write_bytes(data[: len(data) * 99 // 100] + b"\xff" * (len(data) - len(data) * 99 // 100))
    elif damage == "truncated-kv":
        kv.write_bytes(data[: len(data) // 2])
    elif damage == "truncated-tokens":
        index.write_bytes(index.read_bytes()[:-40])
    else:
        index.write_bytes(b"{not a header\n" + index.read_bytes())
    again = run(text)
    assert again["text"] == fresh["text"] and again["timings"]["cached_tokens"] == 0
    assert again["stderr"].count("Warning: prompt cache: removed a damaged entry") == 1, again["stderr"]
    # The damaged one is gone; the run saved a good one in its place, which the next run uses.
    third = run(text)
    assert third["stderr"] == "" and third["timings"]["cached_tokens"] > 0 and third["text"] == fresh["text"]
    assert len(list(folder.glob("*.kv"))) == len(list(folder.glob("*.tokens"))) == 1


def test_a_foreign_entry_is_never_used(run, tmp_path, tiny_ckpt):
    from .helpers import variant_gguf

    text = _file(45, "")
    run(text)
    folder, kv = _entry(tmp_path)
    other_model = variant_gguf(tiny_ckpt, tmp_path / "other.gguf", drop=("eot",))
    proc = subprocess.run([sys.executable, "-m", "cg", "complete", "-m", str(other_model), "--json", "-n", "2",
                           "--ctx", "2048", *NO_STOPS], input=text, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "CG_HOME": str(tmp_path / "home")})
    assert proc.returncode == 0
    other_folder = next(f for f in (tmp_path / "home" / "prompt-cache").iterdir() if f != folder)
    for p in other_folder.iterdir():
        p.unlink()
    shutil.copy(kv, other_folder / kv.name)  # another model's entry, dropped in this model's folder
    shutil.copy(kv.with_suffix(".tokens"), other_folder / kv.with_suffix(".tokens").name)
    proc = subprocess.run([sys.executable, "-m", "cg", "complete", "-m", str(other_model), "--json", "-n", "2",
                           "--ctx", "2048", *NO_STOPS], input=text, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "CG_HOME": str(tmp_path / "home")})
    data = json.loads(proc.stdout)
    assert proc.returncode == 0 and data["timings"]["cached_tokens"] == 0
    assert "removed a damaged entry (another format or another model)" in proc.stderr
    # What is there now is this model's own entry (the run saved one), not the copy.
    header = json.loads((other_folder / kv.with_suffix(".tokens").name).read_bytes().split(b"\n", 1)[0])
    assert header["model"] == other_folder.name != folder.name


def test_the_cache_stays_under_its_size_limit(run, tmp_path):
    for i in range(3):
        run(f"# file {i}\n" + _file(45, ""), CG_PROMPT_CACHE_MB="0.7")  # three unrelated prompts, ~470 KB each
    [folder] = (tmp_path / "home" / "prompt-cache").iterdir()
    entries = list(folder.glob("*.kv"))
    assert len(entries) == 1 and sum(p.stat().st_size for p in entries) <= 0.7 * 2**20
    assert len(list(folder.glob("*.tokens"))) == 1 and not list(folder.glob(".*tmp"))


def test_short_prompts_are_not_cached(run, tmp_path):
    run("def f():\n    <CURSOR>\n")
    assert not list((tmp_path / "home").glob("prompt-cache/*/*.kv"))


@pytest.mark.parametrize("flags, env, said", [
    (["--exact", "--splice"], {}, "contradict"),
    ([], {"CG_EXACT": "1", "CG_SPLICE": "1"}, "contradict"),
    (["--exact"], {"CG_SPLICE": "1"}, None),  # the command line beats the environment
    (["--splice"], {"CG_EXACT": "1"}, None),
    ([], {"CG_SPLICE": "banana"}, "'banana' is not a valid boolean"),
    ([], {"CG_EXACT": "nan"}, "'nan' is not a valid boolean"),
])
def test_exact_and_splice_from_the_command_line_and_the_environment(tiny_gguf, tmp_path, flags, env, said):
    proc = subprocess.run([sys.executable, "-m", "cg", "complete", "-m", str(tiny_gguf), "--json", "-n", "1", *NO_STOPS,
                           *flags], input="x = <CURSOR>\n", capture_output=True, text=True, timeout=120,
                          env={**os.environ, "CG_HOME": str(tmp_path / "home"), **env})
    if said:
        assert proc.returncode == 2 and said in proc.stderr.splitlines()[0], proc.stderr
    else:
        assert proc.returncode == 0 and json.loads(proc.stdout)["completion_tokens"] == 1, proc.stderr
