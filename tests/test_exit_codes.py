"""One real `cg` run per row of README.md's exit-code table; the table and these tests must agree."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from .fakehub import FakeHub, Repo, folder_files
from .helpers import NO_STOPS, run_cg

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_codes() -> set[int]:
    table = README.read_text(encoding="utf-8").split("| exit code | meaning |", 1)[1].split("\n\n", 1)[0]
    return {int(m) for m in re.findall(r"^\| (\d+) \|", table, re.M)}


@pytest.fixture(scope="module")
def hub(tiny_ckpt):
    with FakeHub() as server:
        server.repos["google/codegemma-2b"] = Repo(folder_files(tiny_ckpt), gated=True, accepted_tokens={"hf_ok"})
        yield server


@pytest.fixture()
def hub_env(hub, tmp_path) -> dict[str, str]:
    return {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf"), "CG_HOME": str(tmp_path / "cg"), "HF_TOKEN": ""}


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    return next((line for line in proc.stderr.splitlines() if line.startswith("Error: ")), proc.stderr)


def test_0_success(tiny_gguf):
    proc = run_cg("complete", "-m", str(tiny_gguf), "-n", "3", *NO_STOPS, stdin="x = <CURSOR>\n")
    assert (proc.returncode, proc.stderr) == (0, "") and proc.stdout


def test_1_failure_not_caused_by_the_input(tiny_ckpt, tmp_path, monkeypatch, capsys):
    # The disk cannot hold the output: not the user's input. (The one stand-in: the free space the OS reports.)
    from cg.cli import main

    monkeypatch.setattr("shutil.disk_usage", lambda _p: SimpleNamespace(total=10**9, used=10**9, free=0))
    assert main(["quantize", str(tiny_ckpt), "--type", "q8_0", "-o", str(tmp_path / "m.gguf")]) == 1
    assert capsys.readouterr().err.startswith("Error: not enough disk space")


def test_2_bad_input(tmp_path):
    proc = run_cg("complete", "-m", str(tmp_path / "missing.gguf"), "--prefix", "x")
    assert proc.returncode == 2 and error_line(proc).startswith("Error: model not found")


def test_3_hub_authentication(hub_env):
    proc = run_cg("download", "codegemma-2b", env=hub_env)
    assert proc.returncode == 3 and error_line(proc).startswith("Error: google/codegemma-2b is gated")


def test_4_not_on_the_hub(hub_env):
    proc = run_cg("download", "nobody/nothing", env=hub_env)
    assert proc.returncode == 4 and "not found" in error_line(proc)


def test_5_network_unreachable(hub_env):
    proc = run_cg("download", "codegemma-2b", env={**hub_env, "HF_ENDPOINT": "http://127.0.0.1:9"})
    assert proc.returncode == 5 and error_line(proc).startswith("Error: cannot reach the hub")


def _signalled(tiny_gguf, tmp_path, sig: int) -> tuple[int, str]:
    cmd = [sys.executable, "-m", "cg", "complete", "-m", str(tiny_gguf), "--ctx", "8192", "-n", "8000", *NO_STOPS,
           "--prefix", "x = "]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "CG_HOME": str(tmp_path)})
    assert proc.stdout is not None and proc.stdout.read(1)  # generating
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err.decode().splitlines()[-1]


def test_129_hung_up(tiny_gguf, tmp_path):
    assert _signalled(tiny_gguf, tmp_path, signal.SIGHUP) == (129, "Error: hung up (SIGHUP)")


def test_130_interrupted(tiny_gguf, tmp_path):
    assert _signalled(tiny_gguf, tmp_path, signal.SIGINT) == (130, "Error: interrupted")


def test_143_terminated(tiny_gguf, tmp_path):
    assert _signalled(tiny_gguf, tmp_path, signal.SIGTERM) == (143, "Error: terminated (SIGTERM)")


def test_every_row_of_the_readme_table_is_tested():
    tested = {int(m) for m in re.findall(r"^def test_(\d+)_", Path(__file__).read_text(), re.M)}
    assert tested == readme_codes() and tested >= {0, 1, 2, 3, 4, 5, 129, 130, 143}
