"""The `cg` command: exact stdout, empty stderr on success, one funnel for errors, fast start-up."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest

from cg.cli import main
from cg.complete import Request, complete, generate
from cg.engine import Sampling

from .helpers import NO_STOPS, NO_STOPS_BIAS, run_cg


def cg(capsys, monkeypatch, *args, stdin: str | None = None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin.encode())))
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err




@pytest.mark.parametrize("args", [["--help"], ["complete", "--help"]])
def test_help_loads_no_heavy_module(args):
    code = (f"import sys; from cg.cli import main; rc = main({args!r}); "
            "print(rc, [m for m in ('llama_cpp', 'numpy', 'huggingface_hub') if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip().splitlines()[-1] == "0 []"


def test_complete_from_stdin_prints_exactly_the_completion(capsys, monkeypatch, tiny_gguf):
    expected = complete("def add(a, b):\n", "\nprint(add(1, 2))\n",
                        request=Request(model=str(tiny_gguf), n_ctx=512, max_tokens=12, logit_bias=NO_STOPS_BIAS)).text
    assert expected
    code, out, err = cg(capsys, monkeypatch, "complete", "-m", str(tiny_gguf), "--ctx", "512", "-n", "12", *NO_STOPS,
                        stdin="def add(a, b):\n<CURSOR>\nprint(add(1, 2))\n")
    assert (code, out, err) == (0, expected, "")


def test_complete_prefix_suffix_options_and_marker(capsys, monkeypatch, tiny_gguf):
    expected = complete("x = ", "\n", request=Request(model=str(tiny_gguf), n_ctx=512, max_tokens=8)).text
    a = cg(capsys, monkeypatch, "complete", "-m", str(tiny_gguf), "--ctx", "512", "-n", "8", "--prefix", "x = ",
           "--suffix", "\n")
    b = cg(capsys, monkeypatch, "complete", "-m", str(tiny_gguf), "--ctx", "512", "-n", "8", "--marker", "@@",
           stdin="x = @@\n")
    assert a == b == (0, expected, "")


def test_json_output_fields(capsys, monkeypatch, tiny_gguf):
    code, out, err = cg(capsys, monkeypatch, "complete", "-m", str(tiny_gguf), "--ctx", "512", "-n", "5", "--json",
                        *NO_STOPS,
                        stdin="def f():\n<CURSOR>\n")
    data = json.loads(out)
    assert code == 0 and err == ""
    assert set(data) == {"text", "stop_reason", "prompt_tokens", "completion_tokens", "timings", "model", "fim",
                         "server", "context", "truncated"}
    assert data["truncated"] is False
    assert set(data["timings"]) == {"load_ms", "prompt_ms", "generation_ms", "cached_tokens", "spliced_tokens",
                                    "evaluated_tokens", "disk_cache_ms", "reuse"}
    assert data["stop_reason"] in {"stop_token", "max_tokens", "time_limit", "suffix_overlap", "max_lines",
                                   "end_of_block"}
    assert data["model"] == str(tiny_gguf) and data["fim"] is True and data["server"] is None
    assert 0 < data["completion_tokens"] <= 5 and data["prompt_tokens"] > 3
    assert out.count("\n") == 1


def one_error(err: str, start: str):
    lines = err.strip().splitlines()
    assert lines[0].startswith("Error: " + start), err
    assert len(lines) == 2 and lines[1].startswith("Hint: "), err


def test_model_not_found(capsys, monkeypatch):
    code, out, err = cg(capsys, monkeypatch, "complete", "-m", "/no/such.gguf", "--prefix", "x")
    assert code == 2 and out == ""
    one_error(err, "model not found")


def test_not_a_gguf(capsys, monkeypatch, tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_text("hello")
    code, out, err = cg(capsys, monkeypatch, "complete", "-m", str(bad), "--prefix", "x")
    assert code == 2 and out == ""
    one_error(err, f"{bad} is not a GGUF file")


def test_truncated_gguf(capsys, monkeypatch, tmp_path, tiny_gguf):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_gguf.read_bytes()[: tiny_gguf.stat().st_size // 2])
    code, out, err = cg(capsys, monkeypatch, "complete", "-m", str(cut), "--prefix", "x")
    assert code == 2 and out == ""
    one_error(err, f"cannot load {cut}")


def test_empty_input(capsys, monkeypatch, tiny_gguf):
    code, out, err = cg(capsys, monkeypatch, "complete", "-m", str(tiny_gguf), stdin="  \n")
    assert code == 2 and out == ""
    one_error(err, "empty input")


def test_prompt_cannot_fit(capsys, monkeypatch, tiny_gguf):
    code, out, err = cg(capsys, monkeypatch, "complete", "-m", str(tiny_gguf), "--ctx", "256", "-n", "1000",
                        "--prefix", "x")
    assert code == 2 and out == ""
    one_error(err, "--max-tokens 1000 leaves no room")


def test_unknown_option(capsys, monkeypatch):
    code, out, err = cg(capsys, monkeypatch, "complete", "--frobnicate")
    assert code == 2 and out == ""
    one_error(err, "No such option '--frobnicate'")


def test_traceback_only_with_cg_debug(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_text("nope")
    quiet = run_cg("complete", "-m", str(bad), "--prefix", "x")
    loud = run_cg("complete", "-m", str(bad), "--prefix", "x", env={"CG_DEBUG": "1"})
    assert "Traceback" not in quiet.stderr and quiet.returncode == 2
    assert "Traceback" in loud.stderr and loud.returncode != 0


def test_bundled_model_generate_and_no_fim_complete(bundled_gguf):
    gen = run_cg("generate", "def hello_world():", "-n", "12", "-m", "gemma3-270m")
    assert gen.returncode == 0 and gen.stdout.strip()
    comp = run_cg("complete", "-m", "gemma3-270m", "-n", "8", "--json", stdin="def add(a, b):\n<CURSOR>\n")
    data = json.loads(comp.stdout)
    assert comp.returncode == 0 and data["fim"] is False and data["completion_tokens"] > 0
    assert comp.stderr.count("no FIM tokens") == 1
    strict = run_cg("complete", "-m", "gemma3-270m", "--require-fim", stdin="def add(a, b):\n<CURSOR>\n")
    assert strict.returncode == 2 and strict.stderr.startswith("Error: gemma-3-270m-q4_k_m.gguf has no fill")


def test_bundled_is_the_default_and_announced_once(tmp_path, bundled_gguf):
    env = {"CG_HOME": str(tmp_path)}
    (tmp_path / "models").mkdir()
    os.link(bundled_gguf, tmp_path / "models" / bundled_gguf.name)
    first = run_cg("generate", "x =", "-n", "2", env=env)
    second = run_cg("generate", "x =", "-n", "2", env=env)
    assert first.returncode == second.returncode == 0
    assert "bundled Gemma 3 270M" in first.stderr and "cg download codegemma-2b" in first.stderr
    assert second.stderr == ""


def test_same_seed_same_output(bundled_gguf):
    opts = Request(model=str(bundled_gguf), sampling=Sampling(temperature=0.9, seed=7), max_tokens=16, quiet=True)
    a = generate("The best way to sort a list in Python is", request=opts).text
    b = generate("The best way to sort a list in Python is", request=opts).text
    assert a == b and a.strip()


def run_on_tty(*args: str, stdin: bytes = b"", timeout: float = 300) -> tuple[int, bytes, str]:
    """`cg ARGS` with stdout a terminal (a pty) and stdin a pipe: (exit code, what the terminal got, stderr)."""
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "cg", *args], stdin=subprocess.PIPE, stdout=slave,
                            stderr=subprocess.PIPE)
    os.close(slave)
    proc.stdin.write(stdin)
    proc.stdin.close()
    out = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    err = proc.stderr.read().decode()
    return proc.wait(timeout=timeout), out, err


def test_a_terminal_gets_a_final_line_break_and_a_pipe_exactly_the_text(tiny_gguf):
    """The shell prompt joined the completion's last line on a terminal."""
    base = ["-m", str(tiny_gguf), "--ctx", "512", "-n", "6", *NO_STOPS]
    for args, stdin in [(["complete", *base], "x = <CURSOR>"), (["generate", *base], "x =")]:
        piped = run_cg(*args, stdin=stdin)
        assert piped.returncode == 0 and piped.stdout and not piped.stdout.endswith("\n")
        code, shown, err = run_on_tty(*args, stdin=stdin.encode())
        assert (code, err) == (0, "")
        assert shown == (piped.stdout + "\n").replace("\n", "\r\n").encode()  # the terminal maps \n to \r\n


def test_several_completions_are_labelled_on_a_terminal(tmp_path, tiny_gguf):
    f = tmp_path / "a.py"
    f.write_text("a = \nb = \n")
    args = ["infill", f"{f}:1", f"{f}:2", "-m", str(tiny_gguf), "--ctx", "512", "-n", "3", *NO_STOPS]
    piped = run_cg(*args)
    first, second = (json.loads(line)["text"] for line in run_cg(*args, "--json").stdout.splitlines())
    assert piped.stdout == f"{first}\n{second}"  # a pipe: exactly the texts (--json tells them apart)
    code, shown, err = run_on_tty(*args)
    assert (code, err) == (0, "")
    expected = f"==> {f}:1 <==\n{first.rstrip(chr(10))}\n\n==> {f}:2 <==\n{second.rstrip(chr(10))}\n"
    assert shown.decode() == expected.replace("\n", "\r\n")


def test_the_no_fim_warning_is_given_once_per_run(tmp_path, bundled_gguf):
    f = tmp_path / "a.py"
    f.write_text("a = \nb = \nc = \n")
    proc = run_cg("infill", f"{f}:1", f"{f}:2", f"{f}:3", "-m", str(bundled_gguf), "-n", "2")
    assert proc.returncode == 0 and proc.stderr.count("has no FIM tokens") == 1, proc.stderr


@pytest.mark.parametrize("args", [["generate", "also an arg"], ["complete", "--prefix", "x = "],
                                  ["complete", "--suffix", "\n"]])
def test_input_on_the_command_line_and_stdin_is_refused(capsys, monkeypatch, args):
    """`echo x | cg generate "also an arg"` dropped standard input silently."""
    code, out, err = cg(capsys, monkeypatch, *args, stdin="x\n")
    assert code == 2 and out == ""
    one_error(err, "")
    assert "standard input both given" in err


def test_stdin_refused_from_a_real_pipe_and_file_but_not_an_empty_one(tmp_path):
    read, write = os.pipe()
    os.write(write, b"x\n")
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        proc = subprocess.run([sys.executable, "-m", "cg", "generate", "an arg"], stdin=pipe, capture_output=True,
                              text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("Error: a prompt argument and standard input both given")
    data = tmp_path / "in.txt"
    data.write_text("x\n")
    with data.open("rb") as stdin:
        proc = subprocess.run([sys.executable, "-m", "cg", "complete", "--prefix", "x"], stdin=stdin,
                              capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--prefix and standard input both given" in proc.stderr
    # Nothing waiting on standard input (/dev/null, an empty pipe): the argument is the input.
    empty = run_cg("complete", "-m", "/no/such.gguf", "--prefix", "x")
    with open(os.devnull, "rb") as null:
        devnull = subprocess.run([sys.executable, "-m", "cg", "complete", "-m", "/no/such.gguf", "--prefix", "x"],
                                 stdin=null, capture_output=True, text=True, timeout=120)
    assert empty.stderr.startswith("Error: model not found") and devnull.stderr.startswith("Error: model not found")


@pytest.mark.parametrize("args", [["complete", "-n", "abc"], ["generate", "-n", "abc", "x"],
                                  ["complete", "--ctx", "lots"], ["eval", "humaneval-infill", "-n", "abc"],
                                  ["serve", "--port", "abc"]])
def test_a_bad_integer_says_integer(capsys, monkeypatch, args):
    """`-n abc` said "'abc' is not a valid integer range"."""
    code, out, err = cg(capsys, monkeypatch, *args)
    assert code == 2 and out == ""
    one_error(err, "Invalid value")
    assert f"'{next(a for a in args if a in ('abc', 'lots'))}' is not a valid integer." in err and "range" not in err


def test_a_fenced_answer_streams_and_stops_at_the_closing_fence(tiny_engine, tiny_opts):
    """generate printed nothing until the whole answer was in (`| head -c 20` did not stop it)."""
    from cg.complete import stream_generate

    from .helpers import forcing

    ids = tiny_engine.tokenize_text("```python\nprint(1)\nprint(2)\n```\nThis prints 1 and 2.\n")
    opts = Request(**{**tiny_opts.__dict__, "max_tokens": 64})
    request = replace(opts, chat=True, logits_processor=forcing([*ids, 107]))
    events = list(stream_generate("say hi", request=request, engine=tiny_engine))
    assert "print(1)" in "".join(e.text for e in events if e.result is None)  # out before the answer ended
    result = events[-1].result
    assert result is not None and result.stop_reason == "end_of_block"
    assert "".join(e.text for e in events) == "print(1)\nprint(2)"
    assert result.completion_tokens < len(ids)  # decoding stopped at the fence, not at the end
