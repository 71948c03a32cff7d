"""cg on real servers: llama.cpp's llama-server (native API and /v1) and vLLM on the CPU, serving the
tiny CodeGemma-layout model. Same text as the local engine, stops the servers miss, sentinels in
code kept as text, infill and eval through a server, every error, and `cg serve`.

No mock of either server. The one stand-in is a small HTTP server for what neither real server
does: refusing token-id prompts, and failing with a 500.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from cg.cli import main
from cg.complete import Request, complete

from .helpers import ID, NO_STOPS, NO_STOPS_BIAS, run_cg, variant_gguf
from .servers import JsonHandler, free_port, llama_server_binary, start_llama_server, start_server, start_vllm

CASES = [
    ("def add(a, b):\n", "\nprint(add(1, 2))\n"),
    ("import os\n\nclass Stack:\n    def push(self, item):\n",
     "\n    def pop(self):\n        return self.items.pop()\n"),
    ("for i in range(10):\n    ", "\nprint('done')\n"),
]


@pytest.fixture(scope="session")
def llama_server(tiny_gguf, tmp_path_factory):
    server = start_llama_server(tiny_gguf, tmp_path_factory.mktemp("llama-server") / "log")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def leaky_gguf(tiny_ckpt, tmp_path_factory) -> Path:
    """The tiny model as llama.cpp's own converter writes CodeGemma: no fim_sep (nor eot) key."""
    return variant_gguf(tiny_ckpt, tmp_path_factory.mktemp("leaky") / "leaky.gguf", drop=("fim_sep", "eot"))


@pytest.fixture(scope="session")
def leaky_server(leaky_gguf, tmp_path_factory):
    server = start_llama_server(leaky_gguf, tmp_path_factory.mktemp("leaky-server") / "log")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def vllm_server(tiny_ckpt, tmp_path_factory):
    server = start_vllm(tiny_ckpt, tmp_path_factory.mktemp("vllm") / "log")
    yield server
    server.stop()


@pytest.fixture(params=["llama", "llama-v1", "vllm"])
def served(request):
    """(URL cg is given, the local GGUF the same model is)."""
    if request.param == "vllm":
        return request.getfixturevalue("vllm_server").url
    server = request.getfixturevalue("llama_server")
    return server.url + ("/v1" if request.param == "llama-v1" else "")


def local(tiny_gguf, **kw) -> Request:
    return Request(**{"model": str(tiny_gguf), "n_ctx": 1024, "max_tokens": 24, "quiet": True, **kw})


def remote(url: str, **kw) -> Request:
    return Request(**{"server": url, "n_ctx": 1024, "max_tokens": 24, "quiet": True, **kw})


@pytest.mark.parametrize("bias", [NO_STOPS_BIAS, None])
def test_the_same_completion_as_the_local_engine(served, tiny_gguf, bias):
    for prefix, suffix in CASES:
        here = complete(prefix, suffix, request=local(tiny_gguf, logit_bias=bias))
        there = complete(prefix, suffix, request=remote(served, logit_bias=bias))
        assert there.prompt_ids == here.prompt_ids
        assert (there.text, there.stop_reason, there.completion_tokens) == \
               (here.text, here.stop_reason, here.completion_tokens)
        assert there.server == served.removesuffix("/") and here.server is None


def _raw_llama(url: str, prompt: list[int], bias: dict[int, float]) -> list[int]:
    body = {"prompt": prompt, "n_predict": 12, "temperature": 0, "return_tokens": True,
            "logit_bias": [[t, b] for t, b in bias.items()]}
    request = urllib.request.Request(url + "/completion", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as resp:
        return json.loads(resp.read())["tokens"]


def _raw_vllm(url: str, model: str, prompt: list[int], bias: dict[int, float]) -> str:
    body = {"model": model, "prompt": prompt, "max_tokens": 12, "temperature": 0, "skip_special_tokens": False,
            "logit_bias": {str(t): b for t, b in bias.items()}}
    request = urllib.request.Request(url + "/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as resp:
        return json.loads(resp.read())["choices"][0]["text"]


def test_the_file_separator_a_bare_server_runs_past_is_a_stop(leaky_server, vllm_server, leaky_gguf, tiny_ckpt):
    """Pushed towards <|file_separator|> (--logit-bias 70=+4, the other stops banned), the bare servers go
    on past it; cg stops there."""
    bias = {**NO_STOPS_BIAS, ID["fim_sep"]: 4.0}
    opts = Request(model=str(leaky_gguf), n_ctx=1024, max_tokens=24, quiet=True, logit_bias=bias)
    here = complete(*CASES[0], request=opts)
    assert here.stop_reason == "stop_token"
    tokens = _raw_llama(leaky_server.url, here.prompt_ids, bias)
    assert ID["fim_sep"] in tokens and tokens.index(ID["fim_sep"]) < len(tokens) - 1  # ran on past it
    text = _raw_vllm(vllm_server.url, str(tiny_ckpt), here.prompt_ids, bias)
    assert text.count("<|file_separator|>") > 1  # ran on past the first one
    for url in (leaky_server.url, leaky_server.url + "/v1", vllm_server.url):
        there = complete(*CASES[0], request=remote(url, logit_bias=bias))
        assert (there.text, there.stop_reason) == (here.text, "stop_token")


def test_sentinel_text_in_code_stays_text(served, tiny_gguf):
    code = "s = '<|fim_middle|><|fim_prefix|><|file_separator|>'\n"
    there = complete(code, "print(s)\n", request=remote(served, max_tokens=1))
    ids = there.prompt_ids
    assert ids.count(ID["fim_pre"]) == ids.count(ID["fim_suf"]) == ids.count(ID["fim_mid"]) == 1
    assert ID["fim_sep"] not in ids and ids.count(ID["bos"]) == 1


def test_llama_servers_own_tokenizer_would_inject_sentinels(llama_server):
    """Why cg splits sentinels: /tokenize parses them in user text by default."""
    body = json.dumps({"content": "def f():\n<|fim_prefix|>"}).encode()
    request = urllib.request.Request(llama_server.url + "/tokenize", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        assert json.loads(resp.read())["tokens"][-1] == ID["fim_pre"]


def test_json_names_the_server(llama_server):
    proc = run_cg("complete", "--server", llama_server.url, "--json", "-n", "3", *NO_STOPS, "--prefix", "x = ")
    data = json.loads(proc.stdout)
    assert proc.returncode == 0 and data["server"] == llama_server.url and data["completion_tokens"] == 3


def test_server_api_forced(llama_server, vllm_server):
    """--server-api openai on llama-server's root URL drives its /v1 and answers as its native API;
    --server-api llama on vLLM finds no llama.cpp API there."""
    args = ["complete", "--json", "-n", "3", *NO_STOPS, "--prefix", "x = "]
    native = json.loads(run_cg(*args, "--server", llama_server.url).stdout)
    proc = run_cg(*args, "--server", llama_server.url, "--server-api", "openai")
    forced = json.loads(proc.stdout)
    assert proc.returncode == 0 and forced["server"] == llama_server.url + "/v1"
    assert (forced["text"], forced["completion_tokens"]) == (native["text"], native["completion_tokens"])
    proc = run_cg("complete", "--server", vllm_server.url, "--server-api", "llama", "--prefix", "x")
    assert proc.returncode == 2 and proc.stderr.startswith("Error: no llama.cpp server API at")


@pytest.mark.parametrize("command", [["complete", "--prefix", "x"], ["generate", "x"], ["infill", "f.py:1"],
                                     ["eval", "humaneval-infill", "--limit", "1"]])
def test_an_unknown_server_api_is_bad_input_on_every_command(command, capsys):
    assert main([*command, "--server", "http://127.0.0.1:9", "--server-api", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Error: Invalid value for '--server-api': 'nope' is not one of 'llama', 'openai'")


def test_infill_through_a_server_writes_what_the_local_engine_writes(llama_server, tiny_gguf, tmp_path):
    files = {}
    for where in ("local", "server"):
        f = tmp_path / where / "mod.py"
        f.parent.mkdir()
        f.write_text("def f(x):\n    y = \n    return y\n")
        source = ["--server", llama_server.url] if where == "server" else ["-m", str(tiny_gguf), "--ctx", "1024"]
        proc = run_cg("infill", f"{f}:2", "--write", "-n", "6", *NO_STOPS, *source)
        assert proc.returncode == 0, proc.stderr
        files[where] = f.read_text()
    assert files["server"] == files["local"] != "def f(x):\n    y = \n    return y\n"


KEEP = ("task_id", "completion", "sample", "passed", "result", "completion_tokens", "stop_reason")


def _rows(path: Path) -> list[dict]:
    return [{k: json.loads(line)[k] for k in KEEP} for line in path.open()]


def test_eval_with_jobs_through_a_server_equals_a_serial_local_run(llama_server, tiny_gguf, tmp_path):
    from cg.evaluate.humaneval import EvalOptions, evaluate

    # Stops banned: every task gets text, so equal results mean equal completions.
    serial = evaluate(EvalOptions(limit=8, jobs=1, out=tmp_path / "local.jsonl",
                                  run=local(tiny_gguf, logit_bias=NO_STOPS_BIAS, max_tokens=12)))
    parallel = evaluate(EvalOptions(limit=8, jobs=4, gen_jobs=4, out=tmp_path / "server.jsonl",
                                    run=remote(llama_server.url, logit_bias=NO_STOPS_BIAS, max_tokens=12)))
    rows = {name: _rows(tmp_path / f"{name}.jsonl") for name in ("local", "server")}
    assert rows["server"] == rows["local"] and len(rows["local"]) == 8
    assert all(row["completion"] for row in rows["local"]) and parallel.passed == serial.passed
    # The command line: --server and --jobs reach the same place.
    proc = run_cg("eval", "humaneval-infill", "--limit", "8", "-n", "12", "--json", "--server", llama_server.url,
                  "--jobs", "4", "-o", str(tmp_path / "cli.jsonl"))
    assert proc.returncode == 0, proc.stderr
    assert [r["task_id"] for r in _rows(tmp_path / "cli.jsonl")] == [r["task_id"] for r in rows["local"]]


# ---------------------------------------------------------------- errors


def test_unreachable_and_silent_servers_exit_5(tmp_path):
    proc = run_cg("complete", "--server", "http://127.0.0.1:9", "--prefix", "x")
    assert proc.returncode == 5 and proc.stderr.startswith("Error: cannot reach the server at http://127.0.0.1:9")
    with socket.socket() as silent:  # accepts, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        start = time.monotonic()
        proc = run_cg("complete", "--server", url, "--prefix", "x", env={"CG_SERVER_TIMEOUT": "1"})
    assert proc.returncode == 5 and url in proc.stderr and "timed out" in proc.stderr
    assert time.monotonic() - start < 30


def test_a_key_the_server_wants_exit_3(tiny_gguf, tmp_path):
    server = start_llama_server(tiny_gguf, tmp_path / "log", extra=("--api-key", "sekret"))
    try:
        proc = run_cg("complete", "--server", server.url, "--prefix", "x")
        assert proc.returncode == 3 and "refused the request (401)" in proc.stderr and "--api-key" in proc.stderr
        ok = run_cg("complete", "--server", server.url, "-n", "2", "--prefix", "x", env={"CG_API_KEY": "sekret"})
        assert ok.returncode == 0, ok.stderr
    finally:
        server.stop()


def test_a_model_the_server_does_not_have_exit_4(llama_server, vllm_server):
    for url in (llama_server.url, vllm_server.url):
        proc = run_cg("complete", "--server", url, "--model", "codegemma-7b", "--prefix", "x")
        assert proc.returncode == 4 and "does not serve 'codegemma-7b'; it serves: " in proc.stderr


class _Stand_in(JsonHandler):
    """An OpenAI-compatible server of another kind: text prompts only, or failing."""

    mode = "text-only"


    def do_GET(self):
        if self.path == "/v1/models":
            return self._json(200, {"data": [{"id": "m", "max_model_len": 1024}]})
        return self._json(404, {"error": "not found"})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        if self.path == "/tokenize":
            text = body.get("prompt", "")
            specials = {"<bos>": 2, "<eos>": 1, "<|fim_prefix|>": 67, "<|fim_middle|>": 68, "<|fim_suffix|>": 69,
                        "<|file_separator|>": 70}
            return self._json(200, {"tokens": [specials[text]] if text in specials else [ord(c) for c in text]})
        if self.path == "/v1/completions":
            if self.mode == "failing":
                return self._json(500, {"error": {"message": "out of memory"}})
            if isinstance(body.get("prompt"), list):
                return self._json(400, {"error": {"message": "prompt must be a string"}})
        return self._json(404, {"error": "not found"})


@pytest.fixture()
def stand_in():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stand_in)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    _Stand_in.mode = "text-only"


def test_a_server_that_cannot_take_token_ids_is_refused_exit_2(stand_in):
    url = f"http://127.0.0.1:{stand_in.server_address[1]}/v1"
    proc = run_cg("complete", "--server", url, "--prefix", "x")
    assert proc.returncode == 2 and "does not take prompts as token ids" in proc.stderr
    assert "injection" in proc.stderr


def test_a_failing_server_exit_1_and_nothing_written(stand_in, tmp_path):
    _Stand_in.mode = "failing"
    url = f"http://127.0.0.1:{stand_in.server_address[1]}/v1"
    f = tmp_path / "a.py"
    f.write_text("x = \n")
    proc = run_cg("infill", f"{f}:1", "--write", "--server", url)
    assert proc.returncode == 1 and "failed (500)" in proc.stderr and f.read_text() == "x = \n"


def test_a_stream_dropped_mid_completion_exit_1_and_nothing_written(tiny_gguf, tmp_path):
    server = start_llama_server(tiny_gguf, tmp_path / "log", ctx=4096, parallel=1)
    f = tmp_path / "a.py"
    f.write_text("x = \ny = \n")
    cmd = [sys.executable, "-m", "cg", "infill", f"{f}:1", f"{f}:2", "--write", "--no-block-stop", "-n", "3000",
           "--server", server.url, *NO_STOPS]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60  # until the server has begun the first target (a fixed sleep raced it)
        while "launch_slot_" not in (tmp_path / "log").read_text(errors="replace") and time.monotonic() < deadline:
            time.sleep(0.01)
        server.stop(signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
        server.stop()
    assert proc.returncode == 1 and ("dropped the stream" in err or "closed the stream" in err), err
    assert f.read_text() == "x = \ny = \n"


# ---------------------------------------------------------------- cg serve


def test_cg_serve_starts_llama_server_with_the_flags_cg_needs(tiny_gguf, tmp_path):
    port = free_port()
    env = {**os.environ, "CG_LLAMA_SERVER": llama_server_binary(), "CG_HOME": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "cg", "serve", "--llama-server", str(tiny_gguf), "--port",
                             str(port), "--jobs", "3", "--ctx", "512"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        url = proc.stdout.readline().strip()
        assert url == f"http://127.0.0.1:{port}"
        assert proc.stdout.readline() == f"export CG_SERVER={url}\n"
        with urllib.request.urlopen(url + "/props", timeout=30) as resp:
            props = json.loads(resp.read())
        assert props["total_slots"] == 3 and props["default_generation_settings"]["n_ctx"] == 512
        done = run_cg("complete", "-n", "3", *NO_STOPS, "--json", "--prefix", "x = ", env={"CG_SERVER": url})
        assert done.returncode == 0 and json.loads(done.stdout)["server"] == url
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "Stopped llama-server." in err
    with pytest.raises(OSError):
        urllib.request.urlopen(url + "/health", timeout=5)



def test_on_a_cpu_with_amx_cg_serve_starts_llama_server_without_weight_repacking(bundled_gguf, tmp_path,
                                                                                monkeypatch):
    """llama.cpp's AMX kernels crash on some machines (llama.cpp #20824; this project's CI): cg
    serve --llama-server passes --no-repack on a CPU with AMX, unless CG_AMX is on. The real
    llama-server takes the flag and puts no weight in a repacked buffer."""
    from cg.serve import llama_server as ls

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f amx_bf16 amx_tile amx_int8\n")
    assert ls.cpu_has_amx(info)
    for other in ("flags\t\t: fpu amx_int8x avx2\n", "model name\t: amx_int8\n", "", "\x00\xff garbage"):
        info.write_text(other, errors="surrogateescape")
        assert not ls.cpu_has_amx(info), other
    assert not ls.cpu_has_amx(tmp_path / "absent") and not ls.cpu_has_amx(tmp_path)
    monkeypatch.setattr(ls, "cpu_has_amx", lambda: True)
    monkeypatch.delenv("CG_AMX", raising=False)
    port = free_port()
    cmd = ls.command(llama_server_binary(), bundled_gguf, ls.ServeOptions(ctx=512, port=port, threads=2))
    assert cmd.count("--no-repack") == 1
    monkeypatch.setenv("CG_AMX", "1")
    assert "--no-repack" not in ls.command("llama-server", bundled_gguf, ls.ServeOptions())
    logs = {}
    for flags in (cmd, [c for c in cmd if c != "--no-repack"]):
        log = tmp_path / f"log{len(logs)}"
        running = start_server([*flags, "-v"], f"http://127.0.0.1:{port}", "/health", log, 120)  # -v: buffers
        running.stop()
        logs["--no-repack" in flags] = log.read_text(errors="replace")
    assert "model buffer size" in logs[True] and "REPACK model buffer" not in logs[True]
    if "REPACK = 1" in logs[False]:  # this build repacks Q4_K weights on this CPU: the flag is what changed that
        assert "CPU_REPACK model buffer size" in logs[False]

def _alive(pid: int) -> bool:
    """A process that runs (a zombie waiting for a parent that never reaps it does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _serving(tiny_gguf, tmp_path, port: int, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, int]:
    """`cg serve --llama-server` on port, once llama-server answers; (cg serve, llama-server's pid)."""
    env = {**os.environ, "CG_LLAMA_SERVER": llama_server_binary(), "CG_HOME": str(tmp_path), **(env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "cg", "serve", "--llama-server", "-m", str(tiny_gguf), "--port",
                             str(port), "--ctx", "256"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    assert proc.stdout.readline().strip() == f"http://127.0.0.1:{port}"
    [child] = [int(c) for c in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=30) as resp:
        assert resp.status == 200
    return proc, child


def test_cg_serve_hands_llama_server_its_key_in_a_private_file(tiny_gguf, tmp_path):
    """The key never shows on a command line (/proc/PID/cmdline is readable by every local
    user), the file that carried it is gone once llama-server has read it, and a key with a
    comma (which llama-server's --api-key would split in two) works."""
    port, key = free_port(), "s3cret,with-comma"
    proc, child = _serving(tiny_gguf, tmp_path, port, env={"CG_API_KEY": key})
    try:
        args = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        assert key.encode() not in b" ".join(args) + Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        assert not Path(args[args.index(b"--api-key-file") + 1].decode()).exists()
        for sent, status in ((key, 200), ("s3cret", 401), (None, 401)):
            headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {sent}"} if sent else {})}
            req = urllib.request.Request(f"http://127.0.0.1:{port}/tokenize", b'{"content": "x"}', headers)
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:
                    got = resp.status
            except urllib.error.HTTPError as exc:
                got = exc.code
            assert got == status, sent
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
        if _alive(child):
            os.kill(child, signal.SIGKILL)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as a server binds it (TIME_WAIT is free)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.parametrize("sig, code, said", [(signal.SIGTERM, 143, "terminated"), (signal.SIGHUP, 129, "hung up"),
                                             (signal.SIGINT, 130, "interrupted")])
def test_cg_serve_stopped_by_a_signal_leaves_no_llama_server(tiny_gguf, tmp_path, sig, code, said):
    """What a supervisor sends (SIGTERM), a closed terminal (SIGHUP) or Ctrl-C to cg serve alone
    (not to its process group): llama-server goes with it and the port is free."""
    port = free_port()
    proc, child = _serving(tiny_gguf, tmp_path, port)
    try:
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        if _alive(child):
            os.kill(child, signal.SIGKILL)
    assert proc.returncode == code and "Stopped llama-server." in err and f"Error: {said}" in err
    assert not _alive(child) and _port_free(port)


def test_cg_serve_killed_outright_takes_llama_server_with_it(tiny_gguf, tmp_path):
    port = free_port()
    proc, child = _serving(tiny_gguf, tmp_path, port)
    try:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(child)  # the parent-death signal stopped it
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)


def test_cg_serve_on_a_taken_port_is_a_clean_error(tiny_gguf, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_cg("serve", "--llama-server", "-m", str(tiny_gguf), "--port", str(port),
                      env={"CG_LLAMA_SERVER": llama_server_binary(), "CG_HOME": str(tmp_path)})
    assert proc.returncode == 2 and proc.stderr.startswith(f"Error: port {port} on 127.0.0.1 is taken"), proc.stderr
    assert "--port" in proc.stderr


def test_cg_serve_reports_a_llama_server_that_dies(tiny_gguf, tmp_path):
    """llama-server gone by itself after starting: cg serve exits non-zero with its log's last lines."""
    port = free_port()
    proc, child = _serving(tiny_gguf, tmp_path, port)
    try:
        os.kill(child, signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 1 and err.count("Error: llama-server stopped by itself") == 1
    assert len(err.split("stopped by itself", 1)[1].splitlines()) >= 2  # its log's last lines follow


def test_cg_serve_without_llama_server_says_how_to_get_it(tmp_path):
    proc = run_cg("serve", "--llama-server", env={"CG_LLAMA_SERVER": "", "PATH": str(tmp_path)})
    assert proc.returncode == 2 and proc.stderr.startswith("Error: llama-server is not installed")
    assert "llama-cpp-python sdist" in proc.stderr



def _infill(url: str, body: dict) -> dict:
    req = urllib.request.Request(url + "/infill", json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.loads(resp.read())


def test_cg_serve_as_the_gateway_in_front_of_a_server(leaky_server, leaky_gguf, tmp_path):
    """cg serve --server URL: llama.vim's /infill in front of a llama-server whose GGUF lacks the
    <|file_separator|> key. Pushed towards it, llama-server's own /infill runs on to n_predict;
    through cg serve the text is the local engine's, ended at <|file_separator|>."""
    bias = {**NO_STOPS_BIAS, ID["fim_sep"]: 4.0}
    body = {"input_prefix": CASES[0][0], "input_suffix": CASES[0][1], "n_predict": 24,
            "logit_bias": [[t, b] for t, b in bias.items()]}
    here = complete(*CASES[0], request=local(leaky_gguf, logit_bias=bias))
    assert here.stop_reason == "stop_token"
    assert _infill(leaky_server.url, {**body, "temperature": 0})["stop_type"] == "limit"  # ran past it
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "cg", "serve", "--server", leaky_server.url, "--port", str(port),
                             "--ctx", "1024"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "CG_HOME": str(tmp_path)})
    try:
        url = proc.stdout.readline().strip()
        assert url == f"http://127.0.0.1:{port}", proc.stderr
        got = _infill(url, body)
        assert (got["content"], got["stop_type"], got["tokens_evaluated"]) == (here.text, "eos", len(here.prompt_ids))
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "Stopped cg serve." in err



def test_cg_serve_as_a_gateway_sends_the_upstream_key_from_its_file(tiny_gguf, tmp_path):
    """A keyed llama-server behind cg serve: --server-key-file's key goes upstream (CG_API_KEY
    stays the clients' key, here another one); without it the upstream refuses cg serve's first
    look at it, a clear error. The key is on no command line of cg's."""
    upstream_key = tmp_path / "upstream.key"
    upstream_key.write_text("upstream-sekret\n")
    upstream_key.chmod(0o600)
    server = start_llama_server(tiny_gguf, tmp_path / "log", extra=("--api-key-file", str(upstream_key)))
    body = {"input_prefix": CASES[0][0], "input_suffix": CASES[0][1], "n_predict": 4,
            "logit_bias": [[t, b] for t, b in NO_STOPS_BIAS.items()]}
    procs = []
    try:
        for extra in (["--server-key-file", str(upstream_key)], []):
            port = free_port()
            proc = subprocess.Popen([sys.executable, "-m", "cg", "serve", "--server", server.url, "--port", str(port),
                                     "--ctx", "1024", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, env={**os.environ, "CG_HOME": str(tmp_path), "CG_API_KEY": "clients"})
            procs.append(proc)
            url = proc.stdout.readline().strip()
            if not extra:  # the upstream refuses cg serve's first look at it: a clear error, exit 3
                _, err = proc.communicate(timeout=60)
                assert proc.returncode == 3 and "refused the request (401)" in err, err
                assert "upstream-sekret" not in err
                continue
            assert url == f"http://127.0.0.1:{port}", proc.stderr
            assert not any("upstream-sekret" in a for a in Path(f"/proc/{proc.pid}/cmdline").read_text().split("\0"))
            req = urllib.request.Request(url + "/infill", json.dumps(body).encode(),
                                         {"Content-Type": "application/json", "Authorization": "Bearer clients"})
            with urllib.request.urlopen(req, timeout=120) as resp:
                got = json.loads(resp.read())
            assert resp.status == 200 and got["tokens_predicted"] == 4, got
    finally:
        for proc in procs:
            proc.kill()
            proc.communicate(timeout=60)
        server.stop()
    no_server = run_cg("serve", "--server-key-file", str(upstream_key), "--port", str(free_port()))
    assert no_server.returncode == 2
    assert no_server.stderr.startswith("Error: --server-key-file is the key of a --server"), no_server.stderr

def test_a_corrupt_store_is_a_clear_error_through_a_server_too(llama_server, tmp_path):
    """The ids cg recorded for a served model come from the store: a corrupt one is the usual
    error, never silently dropped (completions would run past <|file_separator|>)."""
    (tmp_path / "models.json").write_text('{"models": {"a": ')
    proc = run_cg("complete", "--server", llama_server.url, "--prefix", "x", env={"CG_HOME": str(tmp_path)})
    assert proc.returncode == 2 and proc.stderr.startswith(f"Error: {tmp_path / 'models.json'} is corrupt")


def test_the_server_keeps_its_cached_prompt_between_cg_calls(tiny_gguf, tmp_path):
    """One slot: cg's second call finds its prompt in the slot (cg sends nothing else to the
    slot, not even a probe), and --json reports the server's own reused-token count."""
    server = start_llama_server(tiny_gguf, tmp_path / "log", ctx=2048, parallel=1)
    text = "".join(f"def f{i}(x):\n    return x * {i}\n\n" for i in range(40)) + "<CURSOR>\n"
    try:
        args = ["complete", "--server", server.url, "--json", "-n", "3", *NO_STOPS]
        first = json.loads(run_cg(*args, stdin=text).stdout)
        second = json.loads(run_cg(*args, stdin=text).stdout)
    finally:
        server.stop()
    assert first["timings"]["reuse"] == second["timings"]["reuse"] == "server"
    assert first["timings"]["cached_tokens"] == 0
    assert second["prompt_tokens"] - 4 <= second["timings"]["cached_tokens"] < second["prompt_tokens"]
    assert second["text"] == first["text"]
