"""Real processes killed and raced: files are never mixed, the prompt cache never corrupts output.

Bounded: a fixed number of runs, each with a timeout; random moments from a seeded generator.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from .helpers import NO_STOPS, run_cg

KILL_RUNS = 30


def _infill_cmd(model: Path, files: list[Path]) -> list[str]:
    return [sys.executable, "-m", "cg", "infill", "-m", str(model), "--ctx", "512", "-n", "6", *NO_STOPS,
            "--write", *[f"{f}:2" for f in files]]


def test_sigkill_leaves_each_file_as_it_was_or_complete(tmp_path, tiny_gguf):
    files = [tmp_path / f"mod{i}.py" for i in range(5)]
    before = {f: f"def f{i}(x):\n    y = \n    return y\n".encode() for i, f in enumerate(files)}
    env = {**os.environ, "CG_HOME": str(tmp_path / "home"), "CG_PROMPT_CACHE": "0"}

    def reset() -> None:
        for f, data in before.items():
            f.write_bytes(data)

    reset()
    start = time.perf_counter()
    subprocess.run(_infill_cmd(tiny_gguf, files), env=env, check=True, capture_output=True, timeout=120)
    full_run = time.perf_counter() - start
    after = {f: f.read_bytes() for f in files}
    assert all(after[f] != before[f] for f in files)
    rng = random.Random(13)
    outcomes = set()
    for _ in range(KILL_RUNS):
        reset()
        proc = subprocess.Popen(_infill_cmd(tiny_gguf, files), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        # Half the kills near the end, where the files are written.
        time.sleep(rng.uniform(0, full_run) if rng.random() < 0.5 else rng.uniform(0.8, 1.05) * full_run)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        for f in files:
            assert f.read_bytes() in (before[f], after[f]), f"{f.name} is neither the original nor the result"
        outcomes.add(tuple(f.read_bytes() == after[f] for f in files))
    assert (False,) * 5 in outcomes  # some kills landed before the write (the test can tell)
    reset()
    subprocess.run(_infill_cmd(tiny_gguf, files), env=env, check=True, capture_output=True, timeout=120)
    assert {f: f.read_bytes() for f in files} == after
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == sorted(f.name for f in files)


def _prompt(tag: int) -> str:
    body = "".join(f"def p{tag}_{i}(x):\n    return x * {i} + {tag}\n\n" for i in range(45))
    return body + "<CURSOR>\n"


def test_eight_processes_share_a_small_prompt_cache(tmp_path, tiny_gguf):
    prompts = [_prompt(t) for t in range(4)] * 2  # each prompt twice: same and different long prompts
    cmd = [sys.executable, "-m", "cg", "complete", "-m", str(tiny_gguf), "--ctx", "1024", "-n", "5", "--json",
           *NO_STOPS]
    serial = [json.loads(run_cg(*cmd[3:], stdin=p, env={"CG_PROMPT_CACHE": "0"}).stdout)["text"] for p in prompts[:4]]
    env = {**os.environ, "CG_HOME": str(tmp_path / "home"), "CG_PROMPT_CACHE_MB": "1"}  # ~2 entries: evictions
    for _round in range(2):  # the second round restores while others save and evict
        procs = [subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for _ in prompts]
        results = [p.communicate(prompt, timeout=180) for p, prompt in zip(procs, prompts, strict=True)]
        assert [p.returncode for p in procs] == [0] * len(procs), [err for _, err in results]
        assert [err for _, err in results] == [""] * len(procs)
        assert [json.loads(out)["text"] for out, _ in results] == serial * 2
    [folder] = (tmp_path / "home" / "prompt-cache").iterdir()
    kv = {p.stem for p in folder.glob("*.kv")}
    assert kv and kv == {p.stem for p in folder.glob("*.tokens")}  # no orphans either way
    assert sum(p.stat().st_size for p in folder.glob("*.kv")) <= 2**20
    assert [p.name for p in folder.iterdir() if p.name.endswith(".cg-tmp")] == []
