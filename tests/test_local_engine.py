"""The local engine as users run it: block stops on the real bundled model, GPU layers, the
prompt window, prompt progress on a terminal, `cg doctor` and `cg --version`."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from unittest import mock

import pytest

from cg import complete as complete_mod
from cg.cli import main
from cg.complete import Request, complete
from cg.engine import decode
from cg.engine import factory as engines
from cg.engine.local import engine as engine_mod

from .helpers import NO_STOPS, run_cg


def test_the_readme_first_command_prints_one_body_and_stops(bundled_gguf):
    proc = run_cg("complete", "-m", "gemma3-270m", stdin="def add(a, b):\n<CURSOR>\n")
    assert proc.returncode == 0 and proc.stdout == "    return a + b", proc.stderr
    as_json = run_cg("complete", "-q", "-m", "gemma3-270m", "--json", stdin="def add(a, b):\n<CURSOR>\n")
    data = json.loads(as_json.stdout)
    assert data["stop_reason"] == "end_of_block"
    # Without block stops it runs on into the next definitions.
    run_on = run_cg("complete", "-q", "-m", "gemma3-270m", "--no-block-stop", "-n", "40",
                    stdin="def add(a, b):\n<CURSOR>\n")
    assert run_on.stdout.startswith("    return a + b\n") and "def " in run_on.stdout


def test_generate_shows_the_asked_function_once(bundled_gguf):
    proc = run_cg("generate", "-q", "-m", "gemma3-270m", "--json", "Write a Python function that reverses a string.")
    data = json.loads(proc.stdout)
    assert data["text"].count("def ") == 1 and data["text"].startswith("def ")
    assert data["stop_reason"] in ("end_of_block", "repetition")
    # --max-tokens given: the answer is not ended after one definition.
    ask = "Write a Python function that reverses a string."
    longer = run_cg("generate", "-q", "-m", "gemma3-270m", "-n", "60", ask)
    assert len(longer.stdout) > len(data["text"])


def test_gpu_layers_reach_llama_cpp(tiny_gguf, monkeypatch):
    import llama_cpp

    eng = engine_mod.load(tiny_gguf, n_ctx=128, gpu_layers=5)
    assert eng.llm.model_params.n_gpu_layers == 5
    default = engine_mod.load(tiny_gguf, n_ctx=128)
    expected = 0x7FFFFFFF if llama_cpp.llama_supports_gpu_offload() else 0  # -1 is stored as "all"
    assert default.llm.model_params.n_gpu_layers == expected
    assert bool(default.gpu_layers) is bool(llama_cpp.llama_supports_gpu_offload())
    # Through the CLI, by option and by environment.
    for args, env in ((["-ngl", "7"], None), ([], "3")):
        engines.forget()
        if env:
            monkeypatch.setenv("CG_GPU_LAYERS", env)
        assert main(["complete", "-q", "-m", str(tiny_gguf), "--ctx", "128", "-n", "1", *args, "--prefix", "x"]) == 0
        [loaded] = engines._local.values()
        assert loaded.llm.model_params.n_gpu_layers == int(args[1] if args else env)


def test_a_bad_gpu_layers_setting_is_a_usage_error(monkeypatch, capsys):
    monkeypatch.setenv("CG_GPU_LAYERS", "lots")
    assert main(["complete", "--prefix", "x"]) == 2
    assert "Invalid value for '--gpu-layers'" in capsys.readouterr().err


def long_file(lines: int = 600) -> tuple[str, str]:
    text = "".join(f"def helper_{i}(value):\n    return value * {i} + {i % 7}\n\n" for i in range(lines // 3))
    cut = len(text) * 9 // 10
    cut = text.rfind("\n", 0, cut) + 1
    return text[:cut], text[cut:]


def test_the_prompt_window_on_the_cpu(tiny_gguf, capsys):
    prefix, suffix = long_file()
    opts = Request(model=str(tiny_gguf), n_ctx=8192, max_tokens=4, logit_bias={1: -100.0})
    narrow = complete(prefix, suffix, request=opts)
    # Whole stretches of 16 lines (about 150 tokens here) above and below: stable, a little short.
    assert 2048 - 2 * 160 <= narrow.prompt_tokens <= 2048
    note = capsys.readouterr().err
    assert note.startswith("Note: the 2048-token prompt window left out ") and "--max-prompt-tokens" in note
    wide = complete(prefix, suffix, request=Request(**{**opts.__dict__, "max_prompt_tokens": 6000}))
    assert 2048 < wide.prompt_tokens <= 6000
    # Once per process: a second narrow completion says nothing more.
    complete(prefix, suffix, request=opts)
    assert capsys.readouterr().err == ""


def test_the_window_from_the_environment_and_quiet(tiny_gguf):
    prefix, suffix = long_file()
    text = prefix + "<CURSOR>" + suffix
    args = ["complete", "-m", str(tiny_gguf), "--ctx", "8192", "-n", "2", "--json", *NO_STOPS]
    proc = run_cg(*args, stdin=text, env={"CG_MAX_PROMPT_TOKENS": "1000"})
    assert json.loads(proc.stdout)["prompt_tokens"] <= 1000 and proc.stderr.count("Note: the 1000-token") == 1
    quiet = run_cg(*args, "-q", stdin=text, env={"CG_MAX_PROMPT_TOKENS": "1000"})
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_prompt_evaluation_in_batches_reports_progress_and_changes_nothing(bundled_gguf):
    import llama_cpp

    eng = engine_mod.load(bundled_gguf, n_ctx=2048, n_threads=2)
    prompt = [eng.info.bos, *eng.tokenize_text(long_file(90)[0])][:700]
    seen: list[tuple[int, int]] = []
    indicator = mock.patch("cg.engine.decode.PromptIndicator.update", lambda _self, d, t: seen.append((d, t)))
    with indicator:
        events = decode(eng, prompt, Request(max_tokens=12))
        ours = [e.token for e in events if e.token is not None]
    assert seen == [(128 * k, len(prompt)) for k in range(1, (len(prompt) - 1) // 128 + 1)]
    direct = llama_cpp.Llama(model_path=str(bundled_gguf), n_ctx=2048, n_threads=2, n_ubatch=128, verbose=False)
    theirs = []
    for token in direct.generate(prompt, temp=0.0, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.0):
        theirs.append(token)
        if len(theirs) == len(ours):
            break
    direct.close()
    assert ours == theirs  # same tokens as one llama-cpp-python call evaluating the whole prompt


def _on_a_terminal(args: list[str], stdin: str) -> tuple[int, str, str]:
    """Run cg with stderr on a pseudo-terminal (stdout a pipe): (exit code, stdout, terminal output)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "cg", *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=slave, env={**os.environ, "COLUMNS": "100", "TERM": "xterm"})
    os.close(slave)
    proc.stdin.write(stdin.encode())
    proc.stdin.close()
    screen = b""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            screen += chunk
        elif proc.poll() is not None:
            break
    out = proc.stdout.read().decode()
    proc.wait(timeout=60)
    os.close(master)
    return proc.returncode, out, screen.decode(errors="replace")


def test_progress_on_a_terminal_then_gone(tiny_gguf):
    prefix, suffix = long_file(300)
    args = ["complete", "-m", str(tiny_gguf), "--ctx", "4096", "-n", "3", *NO_STOPS]
    code, out, screen = _on_a_terminal(args, prefix + "<CURSOR>" + suffix)
    assert code == 0 and out
    assert "Reading the prompt" in screen and re.search(r"\d+/\d+", screen)
    plain = run_cg(*args, stdin=prefix + "<CURSOR>" + suffix)
    assert plain.stdout == out and "Reading the prompt" not in plain.stderr  # stderr not a terminal
    for flag in ("-q", "--json"):
        _, _, silent = _on_a_terminal([*args, flag], prefix + "<CURSOR>" + suffix)
        assert "Reading the prompt" not in silent


def test_doctor_on_a_good_home(tmp_path, bundled_gguf):
    proc = run_cg("doctor", env={"CG_HOME": str(tmp_path)})
    assert proc.returncode == 0 and proc.stdout.endswith("All good.\n"), proc.stdout
    for label in ("version", "backend", "GPU offload", "CPU features", "threads", "cg home", "prompt cache",
                  "models", "default model", "settings", "hub token"):
        assert re.search(rf"^{label}\s", proc.stdout, re.M), label
    # A fresh home has the bundled model, as `cg models` lists it (it said "none installed").
    assert re.search(r"^models\s+gemma3-270m \(", proc.stdout, re.M), proc.stdout


def test_doctor_says_what_is_broken_and_how_to_fix_it(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    broken = run_cg("doctor", env={"CG_HOME": str(blocker / "home"), "CG_GPU_LAYERS": "many", "HF_TOKEN": "hf_secret"})
    assert broken.returncode == 1
    assert f"Problem: cg's home {blocker / 'home'} cannot be written" in broken.stdout
    assert "Fix: Set CG_HOME to a writable folder" in broken.stdout and "CG_GPU_LAYERS='many'" in broken.stdout
    assert "hf_secret" not in broken.stdout and "hub token      present (from HF_TOKEN)" in broken.stdout
    home = tmp_path / "home"
    (home).mkdir()
    (home / "models.json").write_text(json.dumps({"default": None, "models": {
        "codegemma-2b-q8_0": {"name": "codegemma-2b-q8_0", "path": str(home / "gone.gguf")}}}))
    missing = run_cg("doctor", env={"CG_HOME": str(home)})
    assert missing.returncode == 1 and "Fix: cg models rm codegemma-2b-q8_0" in missing.stdout


def test_version_is_one_line():
    proc = run_cg("--version")
    assert proc.returncode == 0
    assert re.fullmatch(r"cg \S+, llama-cpp-python \S+, llama\.cpp \S+\n", proc.stdout), proc.stdout


@pytest.mark.parametrize("prompt, one", [("Write a Python function that reverses a string.", True),
                                         ("Write a class for a stack", True), ("write two functions", False),
                                         ("def quicksort(xs):", False), ("Write functions for a queue", False)])
def test_asks_for_one_thing(prompt, one):
    assert complete_mod.asks_for_one_thing(prompt) is one
