"""cg used as an attacker and a clumsy user would: hostile repositories, special files, races,
repeated targets, markers in strings, signals at any instant, corrupt registries, bad numbers.
Each test reproduces a defect that was there (issue 20); real processes, files and llama.cpp."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cg import infill as infill_mod
from cg.cli import main

from .helpers import NO_STOPS, run_cg

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mknod, chown)")


def _prompt_text(engine, result) -> str:
    [filled] = [f for r in result for f in r.filled]
    return engine.llm.detokenize(filled.completion.prompt_ids).decode("utf-8", "replace")


# ---------------------------------------------------------------- --context auto stays in the repository


@pytest.fixture()
def hostile_repo(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    for name in ("secret.h", "secret.py", "secret.js", "linked_target.py"):
        (outside / name).write_text(f"SECRET_{name.replace('.', '_').upper()} = 'do not send'\n")
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / "c").mkdir()
    (repo / "c" / "util.h").write_text("int util_inside_repo(void);\n")
    (repo / "c" / "main.c").write_text('#include "util.h"\n#include "../../outside/secret.h"\n'
                                       '#include "../../../../../../../../etc/passwd"\nint main(void) {\n\n}\n')
    pkg = repo / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "inside.py").write_text("INSIDE_THE_REPO = 1\n")
    os.symlink(outside / "linked_target.py", pkg / "linked.py")
    os.mkfifo(pkg / "pipe.py")
    (pkg / "latin.py").write_bytes("NAME = 'caf\xe9'\n".encode("latin-1"))
    (pkg / "app.py").write_text("from . import inside\nfrom ...outside import secret\nfrom . import linked\n"
                                "from . import pipe\nfrom . import latin\n\nx = \n")
    (repo / "web").mkdir()
    (repo / "web" / "app.js").write_text('const s = require("../../outside/secret.js");\n\nlet x = \n')
    return repo


@pytest.mark.parametrize("target, inside", [("c/main.c:5", "util_inside_repo"), ("pkg/app.py:7", "INSIDE_THE_REPO"),
                                            ("web/app.js:3", None)])
def test_context_auto_never_reads_outside_the_repository(hostile_repo, tiny_opts, tiny_engine, capsys, target,
                                                         inside):
    opts = dataclasses.replace(tiny_opts, max_tokens=1, quiet=False, n_ctx=512)
    result = infill_mod.infill([str(hostile_repo / target)], request=opts, context="auto")
    prompt, err = _prompt_text(tiny_engine, result), capsys.readouterr().err
    assert "SECRET_" not in prompt and "root:" not in prompt
    assert inside is None or inside in prompt  # what is inside the repository still goes in
    assert "skipped" in err and "outside the repository" in err
    if target.startswith("pkg"):
        assert "pipe.py: not a regular file" in err and "latin.py: not UTF-8 text" in err


def test_context_auto_reads_a_target_in_its_own_encoding(tmp_path, tiny_opts, tiny_engine):
    (tmp_path / ".git").mkdir()
    (tmp_path / "helper.py").write_text("HELPER_CONSTANT = 3\n")
    target = tmp_path / "main.py"
    target.write_bytes("# caf\xe9\nimport helper\n\nx = \n".encode("latin-1"))
    opts = dataclasses.replace(tiny_opts, max_tokens=1)
    result = infill_mod.infill([f"{target}:4"], request=opts, context="auto", encoding="latin-1")
    assert "HELPER_CONSTANT" in _prompt_text(tiny_engine, result)


# ---------------------------------------------------------------- special files are never replaced


@ROOT_ONLY
def test_a_device_is_written_to_never_replaced(tmp_path, tiny_ckpt):
    node = tmp_path / "null-like"
    os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # what /dev/null is
    assert run_cg("eval", "export", str(node), "-b", "single-line", "--limit", "2").returncode == 0
    assert stat.S_ISCHR(node.lstat().st_mode)
    proc = run_cg("quantize", str(tiny_ckpt), "--type", "f32", "-o", str(node), "--force")
    assert proc.returncode == 2 and "is a character device, not a regular file" in proc.stderr
    assert stat.S_ISCHR(node.lstat().st_mode) and [p.name for p in tmp_path.iterdir()] == ["null-like"]


def test_a_fifo_and_dev_stdout_are_streamed_to(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    proc = run_cg("eval", "export", str(fifo), "-b", "random-span-light", "--limit", "3")
    reader.join(30)
    assert proc.returncode == 0 and len(got[0].splitlines()) == 3 and stat.S_ISFIFO(fifo.lstat().st_mode)
    piped = run_cg("eval", "export", "/dev/stdout", "-b", "random-span-light", "--limit", "2")
    assert piped.returncode == 0 and len(piped.stdout.splitlines()) == 2, piped.stderr


def test_models_rm_never_deletes_outside_the_store(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    (home / "models" / "m.gguf").write_bytes(b"GGUF")
    (home / "keep.txt").write_text("precious")
    registry = {"default": None, "models": {"m": {"name": "m", "path": str(home / "models" / "m.gguf"),
                                                  "source_dir": str(home / "models" / "..")}}}
    (home / "models.json").write_text(json.dumps(registry))
    proc = run_cg("models", "rm", "m", env={"CG_HOME": str(home)})
    assert proc.returncode == 0, proc.stderr
    assert (home / "keep.txt").read_text() == "precious" and (home / "models").is_dir()
    assert not (home / "models" / "m.gguf").exists()


# ---------------------------------------------------------------- races and repeated targets


def test_two_concurrent_writes_never_drop_an_edit(tmp_path, tiny_gguf):
    """20 pairs of `cg infill --write` on a 20,000-line file: each pair leaves both edits, or one
    of them refused (exit 1, "changed on disk") and the other in the file; never both exit 0
    with one edit lost."""
    f = tmp_path / "big.py"
    original = "a = \nb = 1\nc = \n" + "".join(f"v{i} = {i}\n" for i in range(20_000))
    env = {**os.environ, "CG_HOME": str(tmp_path / "home"), "CG_PROMPT_CACHE": "0"}
    cmd = [sys.executable, "-m", "cg", "infill", "-m", str(tiny_gguf), "--ctx", "512", "--max-prompt-tokens", "256",
           "-n", "4", *NO_STOPS, "--write"]
    outcomes = set()
    for _ in range(20):
        f.write_text(original)
        procs = [subprocess.Popen([*cmd, f"{f}:{line}"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True) for line in (1, 3)]
        results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
        lines = f.read_text().splitlines()
        changed = (lines[0] != "a = ", lines[2] != "c = ")
        for (code, err), edit in zip(results, changed, strict=True):
            assert (code, edit) in ((0, True), (1, False)), (code, err)
            if code == 1:
                assert "changed on disk" in err
        outcomes.add(tuple(code for code, _ in results))
        assert lines[1] == "b = 1" and lines[3:] == original.splitlines()[3:]
    assert outcomes  # at least one pair ran


@pytest.fixture()
def one_fill(tiny_gguf):
    def fill(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        return run_cg("infill", "-m", str(tiny_gguf), "--ctx", "512", "-n", "2", *NO_STOPS, *args, cwd=cwd)

    return fill


def test_overlapping_targets_are_refused_and_repeated_ones_fill_once(tmp_path, one_fill):
    a = tmp_path / "a.py"
    a.write_text("def f(a, b):\n    # cg: fill\n    return a\n")
    proc = one_fill("a.py", "a.py:2:7", "--write", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("Error: targets overlap: a.py:2 (marker) and a.py:2:7")
    assert a.read_text() == "def f(a, b):\n    # cg: fill\n    return a\n"
    for name, text, repeated in (("b.py", "x = 1\n# cg: fill\ny = 2\n", ["b.py", "./b.py"]),
                                 ("c.py", "x = \n", ["c.py:1", "c.py:1"])):
        f = tmp_path / name
        results = []
        for specs in (repeated, repeated[:1]):  # the same target given twice, then once
            f.write_text(text)
            assert one_fill(*specs, "--write", cwd=tmp_path).returncode == 0
            results.append(f.read_text())
        assert results[0] == results[1] != text


def test_an_empty_marker_is_refused(tmp_path, one_fill):
    f = tmp_path / "a.py"
    f.write_text("# License: MIT, keep\nx = 1\n")
    for args in (["a.py", "--marker", "", "--write"], ["a.py", "--marker", " ", "--write"]):
        proc = one_fill(*args, cwd=tmp_path)
        assert proc.returncode == 2 and proc.stderr.startswith("Error: --marker must not be empty")
    assert run_cg("check", "a.py", "--marker", "", cwd=tmp_path).returncode == 2
    assert f.read_text() == "# License: MIT, keep\nx = 1\n"


def test_a_marker_in_a_string_is_not_a_marker(tmp_path, one_fill):
    f = tmp_path / "help.py"
    text = 'HELP = """\n    # cg: fill\n"""\nS = "# cg: fill"\n// cg: fill\n\ndef f():\n    # cg: fill\n'
    f.write_text(text)
    proc = run_cg("check", "help.py", cwd=tmp_path)
    assert proc.returncode == 1 and proc.stdout == "help.py:8\n"  # only the comment in code
    js = tmp_path / "help.js"
    js.write_text('const s = `\n// cg: fill\n`;\n/* cg: fill */\n# cg: fill\n')
    assert run_cg("check", "help.js", cwd=tmp_path).stdout == "help.js:4\n"
    assert one_fill("help.py", "--write", cwd=tmp_path).returncode == 0
    assert f.read_text().startswith('HELP = """\n    # cg: fill\n"""\nS = "# cg: fill"\n// cg: fill\n')


# ---------------------------------------------------------------- signals at any instant


def _handlers_installed(pid: int) -> bool:
    """cg's entry point has taken SIGTERM over (a caught signal in /proc's SigCgt mask)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(caught & (1 << (signal.SIGTERM - 1)))


def _cg_with_handlers(cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
    """cg started, once its signal handlers are in place (or it has already ended)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while not _handlers_installed(proc.pid) and proc.poll() is None:
        time.sleep(0.001)
    return proc


def test_ctrl_c_at_any_instant_is_exit_130_and_no_traceback(tmp_path, tiny_gguf):
    f = tmp_path / "w.py"
    f.write_text("x = \n" * 50)
    cmd = [sys.executable, "-m", "cg", "infill", f"{f}:2", "--write", "-m", str(tiny_gguf), "--ctx", "512", "-n", "3",
           *NO_STOPS]
    env = {**os.environ, "CG_HOME": str(tmp_path / "home"), "CG_PROMPT_CACHE": "0"}
    rng, codes = random.Random(7), set()
    for _ in range(12):
        proc = _cg_with_handlers(cmd, env)
        time.sleep(rng.uniform(0, 0.6))  # imports, Typer, model load, decoding, writing
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode in (0, 130) and "Traceback" not in err and "Exception ignored" not in err, err
        if proc.returncode == 130:
            assert err.splitlines()[-1] == "Error: interrupted" and f.read_text() == "x = \n" * 50
        codes.add(proc.returncode)
        f.write_text("x = \n" * 50)
    assert 130 in codes


def test_ctrl_c_inside_llama_cpps_log_callback_is_raised_after_it(tmp_path, tiny_gguf):
    """The callback runs inside a C call: a KeyboardInterrupt raised there (by Python's own
    handler) used to be printed and dropped. It is raised once the call returns."""
    import llama_cpp

    from cg_core import llama_log

    fired = []

    def ctrl_c(_text: str) -> None:
        if not fired:
            fired.append(1)
            signal.raise_signal(signal.SIGINT)  # Python's default handler raises KeyboardInterrupt here

    with pytest.raises(KeyboardInterrupt), llama_log.capture(on_text=ctrl_c):
        llm = llama_cpp.Llama(model_path=str(tiny_gguf), n_ctx=128, verbose=False)
    assert fired and llm.n_vocab() > 0  # the load finished; the interrupt came after it
    llm.close()


def test_ctrl_c_during_model_load_writes_nothing(tmp_path, tiny_gguf, monkeypatch, capsys):
    from cg_core import llama_log

    f = tmp_path / "w.py"
    f.write_text("x = \n")
    real_add, fired = llama_log.LogBuffer.add, []

    def add(self, level: int, text: str) -> None:
        real_add(self, level, text)
        if not fired:
            fired.append(1)
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(llama_log.LogBuffer, "add", add)
    code = main(["infill", f"{f}:1", "--write", "-m", str(tiny_gguf), "--ctx", "256", "-n", "2", *NO_STOPS])
    assert fired and code == 130 and capsys.readouterr().err.endswith("Error: interrupted\n")
    assert f.read_text() == "x = \n"


# cg's entry point, with a signal sent from another thread a moment after llama.cpp's log callback
# number AT returned: it arrives while llama.cpp loads, and Python runs the handler at the first
# line of the next callback, before any `with` there could defer it (issue 33: exit 0, output out).
_LOAD_SWEEP = r"""
import os, sys, threading, time
from cg_core import llama_log
at, signum, delay = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
real, seen = llama_log.LogBuffer.add, [0]
def add(self, level, text):
    real(self, level, text)
    seen[0] += 1
    if seen[0] == at:
        threading.Thread(target=lambda: (time.sleep(delay), os.kill(os.getpid(), signum))).start()
llama_log.LogBuffer.add = add
sys.argv = ["cg", *sys.argv[4:]]
from cg.entry import run
run()
"""


def _callbacks_in_a_load(gguf: Path) -> int:
    from cg.engine.local import engine as local
    from cg_core import llama_log

    real, seen = llama_log.LogBuffer.add, []

    def add(self, level: int, text: str) -> None:
        seen.append(text)
        real(self, level, text)

    llama_log.LogBuffer.add = add  # type: ignore[method-assign]
    try:
        local.load(gguf, n_ctx=512).llm.close()
    finally:
        llama_log.LogBuffer.add = real  # type: ignore[method-assign]
    return len(seen)


def test_a_signal_at_any_instant_of_the_model_load_ends_cg(tmp_path, tiny_gguf):
    """Swept over the whole load (model and context): Ctrl-C ends
    `cg infill --write` with 130 and the file untouched; SIGTERM ends `cg generate` with 143 and
    nothing on stdout."""
    f = tmp_path / "w.py"
    f.write_text("x = \n" * 5)
    n = _callbacks_in_a_load(tiny_gguf)
    assert n > 50  # llama.cpp calls back for each line it logs, --verbose or not
    env = {**os.environ, "CG_HOME": str(tmp_path / "home"), "CG_PROMPT_CACHE": "0"}
    model = ["-m", str(tiny_gguf), "--ctx", "512", "-n", "3", *NO_STOPS]
    cases = [(signal.SIGINT, 130, ["infill", f"{f}:2", "--write", *model]),
             (signal.SIGTERM, 143, ["generate", "def f():", *model])]
    for i, at in enumerate(sorted({1, 2, *range(n // 7, n, n // 7), n - 1})):
        delay = ("0.0005", "0.002")[i % 2]  # before llama.cpp's next line, or a few lines later
        # Near the load's end the signal may land once decoding has begun: generate's first
        # tokens would then rightly be out, so it is swept over the load's first 6/7 only.
        for sig, code, args in cases if at < n - n // 7 else cases[:1]:
            proc = subprocess.run([sys.executable, "-c", _LOAD_SWEEP, str(at), str(int(sig)), delay, *args],
                                  env=env, capture_output=True, text=True, timeout=120)
            what = f"callback {at} of {n}, +{delay} s, {signal.Signals(sig).name}: {proc.stderr}"
            assert proc.returncode == code, what
            assert proc.stdout == "" and proc.stderr.splitlines()[-1].startswith("Error: "), what
            assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, what
            assert f.read_text() == "x = \n" * 5, what


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_clean_up_their_temp_files(tmp_path, tiny_gguf, sig, code):
    files = [tmp_path / f"m{i}.py" for i in range(4)]
    for f in files:
        f.write_text("def f(x):\n    y = \n    return y\n" + "z = 1\n" * 30_000)  # multi-MB temp files
    before = {f: f.read_bytes() for f in files}
    cmd = [sys.executable, "-m", "cg", "infill", "-m", str(tiny_gguf), "--ctx", "512", "--max-prompt-tokens", "256",
           "-n", "3", *NO_STOPS, "--write", *[f"{f}:2" for f in files]]
    env = {**os.environ, "CG_HOME": str(tmp_path / "home"), "CG_PROMPT_CACHE": "0"}
    rng, codes = random.Random(3), set()
    for _ in range(6):
        proc = _cg_with_handlers(cmd, env)
        time.sleep(rng.uniform(0.2, 2.0))
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode in (0, code) and "Traceback" not in err, err
        codes.add(proc.returncode)
        assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == sorted(f.name for f in files)
        for f in files:
            f.write_bytes(before[f])
    assert code in codes


# ---------------------------------------------------------------- files cg reads and writes


def test_the_final_newline_stays(tmp_path, one_fill):
    e = tmp_path / "e.py"
    e.write_text("def add(a, b):\n")
    assert one_fill("e.py:2", "--write", cwd=tmp_path).returncode == 0
    text = e.read_text()
    assert text.endswith("\n") and not text.endswith("\n\n") and text != "def add(a, b):\n"


@ROOT_ONLY
def test_owner_and_group_are_kept(tmp_path, one_fill):
    f = tmp_path / "owned.py"
    f.write_text("x = \n")
    os.chown(f, 1234, 2345)
    f.chmod(0o640)
    assert one_fill("owned.py:1", "--write", cwd=tmp_path).returncode == 0
    st = f.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 2345, 0o640) and f.read_text() != "x = \n"


def test_a_hard_linked_file_is_refused_without_force(tmp_path, one_fill):
    f = tmp_path / "a.py"
    f.write_text("x = \n")
    os.link(f, tmp_path / "other-name.py")
    proc = one_fill("a.py:1", "--write", cwd=tmp_path)
    assert proc.returncode == 2 and "has 2 hard links" in proc.stderr and "--force" in proc.stderr
    assert f.read_text() == "x = \n"
    assert one_fill("a.py:1", "--write", "--force", cwd=tmp_path).returncode == 0 and f.read_text() != "x = \n"
    assert (tmp_path / "other-name.py").read_text() == "x = \n"


def test_fifos_devices_and_huge_files_are_refused_at_once(tmp_path, one_fill):
    os.mkfifo(tmp_path / "fifo.py")
    big = tmp_path / "big.py"
    with open(big, "wb") as out:
        out.truncate(17 * 2**20)
    start = time.monotonic()
    for args in (["infill", "fifo.py:1"], ["check", "fifo.py"], ["check", "/dev/zero"], ["infill", "/dev/zero:1"],
                 ["check", "big.py"], ["complete", "--prefix-file", "fifo.py"]):
        proc = run_cg(*args, cwd=tmp_path, timeout=60)
        assert proc.returncode == 2 and proc.stderr.startswith("Error: "), (args, proc.stderr)
        assert "not a regular file" in proc.stderr or "over 16.0 MiB" in proc.stderr or "16 MiB" in proc.stderr
    assert time.monotonic() - start < 60
    zeros = subprocess.run(f"head -c {17 * 2**20} /dev/zero | {sys.executable} -m cg complete", shell=True,
                           capture_output=True, text=True, timeout=60)
    assert zeros.returncode == 2 and "over 16 MiB" in zeros.stderr


def test_a_symlink_loop_and_a_non_utf8_file_name(tmp_path, tiny_gguf):
    os.symlink(tmp_path / "loop.py", tmp_path / "loop.py")
    proc = run_cg("check", "loop.py", cwd=tmp_path)
    assert proc.returncode == 2 and "symlink loop" in proc.stderr
    (tmp_path / os.fsdecode(b"name\xff.py")).write_text("x = \n")
    args = [b"-m", b"cg", b"infill", b"name\xff.py:1", b"--json", b"-m", os.fsencode(tiny_gguf), b"--ctx", b"512",
            b"-n", b"2", *[a.encode() for a in NO_STOPS]]
    filled = subprocess.run([os.fsencode(sys.executable), *args], cwd=tmp_path, capture_output=True, timeout=120)
    assert filled.returncode == 0, filled.stderr
    # The name's own bytes, as git prints names (JSON strings hold text; this one is not text).
    assert json.loads(filled.stdout.decode("utf-8", "surrogateescape"))["file"] == os.fsdecode(b"name\xff.py")
    written = subprocess.run([os.fsencode(sys.executable), *args[:4], b"--write", *args[5:]], cwd=tmp_path,
                             capture_output=True, timeout=120)
    assert written.returncode == 0 and (tmp_path / os.fsdecode(b"name\xff.py")).read_text() != "x = \n"


# ---------------------------------------------------------------- registries and settings that are wrong


@pytest.mark.parametrize("registry", [{"models": 5}, {"models": {"a": 5}}, {"models": {"a": {"path": 5}}},
                                      {"default": [1]}, {"models": {"a": {"path": "/x", "special_ids": {"eos": "1"}}}},
                                      [1, 2]])
def test_a_registry_of_the_wrong_shape_is_one_clear_error(tmp_path, registry):
    (tmp_path / "models.json").write_text(json.dumps(registry))
    for args in (["models"], ["complete", "--prefix", "x"], ["models", "rm", "a"]):
        proc = run_cg(*args, env={"CG_HOME": str(tmp_path)})
        assert proc.returncode == 2 and proc.stderr.startswith(f"Error: {tmp_path / 'models.json'} is corrupt")
        assert "Hint: Move it aside" in proc.stderr


@pytest.mark.parametrize("args, env", [
    (["--temperature", "nan"], {}), (["--top-p", "nan"], {}), (["--max-time", "nan"], {}), (["--min-p", "inf"], {}),
    (["--logit-bias", "5=nan"], {}), (["--logit-bias", "5=inf"], {}), ([], {"CG_PROMPT_CACHE_MB": "inf"}),
    ([], {"CG_PROMPT_CACHE_MB": "nan"}), ([], {"CG_SERVER_TIMEOUT": "inf"}), (["--server", "http://127.0.0.1:9"],
                                                                               {"CG_SERVER_TIMEOUT": "nan"}),
])
def test_numbers_that_are_not_numbers_are_refused(tiny_gguf, args, env):
    proc = run_cg("complete", "-m", str(tiny_gguf), "--ctx", "256", "-n", "1", *args, "--prefix", "x", env=env)
    if "CG_SERVER_TIMEOUT" in env and "--server" not in args:
        assert proc.returncode == 0  # not used without a server
        return
    assert proc.returncode == 2 and proc.stderr.startswith("Error: ") and "Traceback" not in proc.stderr, proc.stderr


def test_a_closed_stdout_is_a_clear_error(tiny_gguf):
    proc = subprocess.run(f"{sys.executable} -m cg complete -m {tiny_gguf} --ctx 256 -n 2 {' '.join(NO_STOPS)} "
                          "--prefix 'x = ' >&-", shell=True, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("Error: standard output is closed"), proc.stderr


def test_a_context_too_large_says_so(tiny_gguf):
    proc = run_cg("complete", "-m", str(tiny_gguf), "--ctx", "1000000000", "--prefix", "x")
    assert proc.returncode == 2 and proc.stderr.startswith("Error: cannot make a 1000000000-token context")
    assert "Lower --ctx" in proc.stderr and "corrupt" not in proc.stderr


def test_disk_space_is_said_in_units_people_read(tiny_ckpt, tmp_path, monkeypatch, capsys):
    from types import SimpleNamespace

    monkeypatch.setattr("shutil.disk_usage", lambda _p: SimpleNamespace(total=10**9, used=10**9, free=1000))
    assert main(["quantize", str(tiny_ckpt), "--type", "q8_0", "-o", str(tmp_path / "m.gguf")]) == 1
    err = capsys.readouterr().err
    assert "0.0 GiB" not in err and "1000 bytes free" in err and ("KiB" in err or "MiB" in err)
