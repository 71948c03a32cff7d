"""The on-disk prompt cache: separate `cg` processes reuse an evaluated prefix, with the same output."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cg.reuse import common_prefix

from .helpers import NO_STOPS


def _file(body_lines: int, cursor_line: str) -> str:
    lines = [f"def f{i}(x):\n    return x * {i} + {i * 7 % 13}\n\n" for i in range(body_lines)]
    return "".join(lines[:body_lines * 2 // 3]) + cursor_line + "<CURSOR>\n" + "".join(lines[body_lines * 2 // 3:])


@pytest.fixture()
def run(tiny_gguf, tmp_path):
    def complete(text: str, **env) -> dict:
        proc = subprocess.run([sys.executable, "-m", "cg", "complete", "-m", str(tiny_gguf), "--json", "-n", "6",
                               "--ctx", "2048", *NO_STOPS], input=text, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "CG_HOME": str(tmp_path / "home"), **env})
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    return complete


def test_a_second_process_reuses_the_prompt_and_prints_the_same(run, tmp_path):
    text = _file(45, "")
    first, second = run(text), run(text)
    assert first["prompt_tokens"] >= 256 and first["timings"]["cached_tokens"] == 0
    # Whole 128-token batches are reused (so the output is bit-for-bit a fresh run's).
    assert second["timings"]["cached_tokens"] == (second["prompt_tokens"] - 1) // 128 * 128 > 0
    assert second["text"] == first["text"]
    # An infill further down the same file shares the part before the cursor.
    other = _file(45, "def g(y):\n")
    third = run(other)
    cached = third["timings"]["cached_tokens"]
    assert cached % 128 == 0 and 256 <= cached < third["prompt_tokens"] - 1
    assert third["text"] == run(other, CG_PROMPT_CACHE="0")["text"]
    assert run(other, CG_PROMPT_CACHE="0")["timings"]["cached_tokens"] == 0


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


def test_common_prefix():
    assert common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix([], [1]) == 0 and common_prefix([1, 2], [1, 2]) == 2
