"""`cg serve` against hostile and clumsy clients, each case a defect once found by trying it on a
real server: text that is not text (lone surrogates), fields whose size costs the worker more than
the body's bound suggests (a long stop text, a long model name echoed in every piece), web pages of
other sites, half-sent request heads holding every connection, and key files that are too open,
too big, or left behind by a `cg serve --llama-server` that was killed.

The server is test_serve's, started again for this module (one model load).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from cg.serve.body import MAX_NAME, MAX_STOP_CHARS
from cg.serve.server import MAX_CONNECTIONS

from .helpers import run_cg
from .test_serve import PREFIX, alive, expected, idle, metrics, post, processing, request, server, start  # noqa: F401 - server is a fixture

# Each API's request for "x = " completed in 3 tokens, and where its stop texts go.
BODIES = {
    "/infill": ({"input_prefix": "x = ", "n_predict": 3}, ""),
    "/api/generate": ({"prompt": "x = ", "stream": False, "options": {"num_predict": 3}}, "options"),
    "/v1/completions": ({"prompt": "x = ", "max_tokens": 3}, ""),
}


def with_stop(path: str, stop: list[str]) -> dict:
    body, under = BODIES[path]
    body = json.loads(json.dumps(body))
    (body[under] if under else body)["stop"] = stop
    return body


def error_text(raw: bytes) -> str:
    error = json.loads(raw)["error"]
    return error if isinstance(error, str) else error["message"]


# ---------------------------------------------------------------- text that is not text


@pytest.mark.parametrize("path, raw", [
    ("/infill", b'{"input_prefix": "\\ud800 x = ", "n_predict": 3}'),
    ("/infill", b'{"input_prefix": "x = ", "input_extra": [{"filename": "\\udfff.py", "text": "y"}], "n_predict": 3}'),
    ("/infill", b'{"input_prefix": "x = ", "stop": ["\\ud83d"], "n_predict": 3}'),
    ("/api/generate", b'{"prompt": "x = ", "suffix": "\\ud800", "stream": false, "options": {"num_predict": 3}}'),
    ("/api/generate", b'{"prompt": "x = ", "model": "\\ud800", "stream": true, "options": {"num_predict": 3}}'),
    ("/v1/completions", b'{"prompt": ["\\ude00 x = "], "max_tokens": 3}'),
])
def test_a_lone_surrogate_is_a_400_not_a_500(server, path, raw):  # noqa: F811
    """JSON may escape half of a UTF-16 pair; Python's json keeps it, and UTF-8 cannot encode it:
    the worker's tokenizer (or the answer's writer) failed with a 500 and a logged bug."""
    status, body = request(server.url, path, raw)
    assert status == 400 and "surrogate" in error_text(body)
    assert alive(server.url)


def test_a_whole_surrogate_pair_is_text(server, talkative_gguf):  # noqa: F811
    status, got = post(server.url, "/infill", b'{"input_prefix": "s = \\"\\ud83d\\ude00\\"\\n", "n_predict": 3}')
    assert status == 200 and got["content"] == expected(talkative_gguf, 's = "\U0001f600"\n', "", 3)


# ---------------------------------------------------------------- sizes the body's bound does not cover


@pytest.mark.parametrize("path", list(BODIES))
def test_a_stop_text_longer_than_the_bound_is_refused(server, path):  # noqa: F811
    """Holding back text that may begin a stop costs the stop's length squared at every token: one
    1 MB stop (well within the body's bound) kept the only worker 35 s on a 4-token request."""
    status, raw = request(server.url, path, with_stop(path, ["x" * (MAX_STOP_CHARS + 1)]))
    assert status == 400 and f"at most {MAX_STOP_CHARS} characters" in error_text(raw)


@pytest.mark.parametrize("path", list(BODIES))
def test_stop_texts_up_to_the_bound_and_empty_ones_work(server, talkative_gguf, path):  # noqa: F811
    status, raw = request(server.url, path, with_stop(path, ["", "y" * MAX_STOP_CHARS]))
    assert status == 200 and expected(talkative_gguf, "x = ", "", 3) in raw.decode()


@pytest.mark.parametrize("path", list(BODIES))
def test_a_long_model_name_is_refused(server, path):  # noqa: F811
    """Every streamed piece repeats the model name a client sent: 1 MB of it made each token 1 MB."""
    body = {**BODIES[path][0], "model": "m" * (MAX_NAME + 1)}
    status, raw = request(server.url, path, body)
    assert status == 400 and "model" in error_text(raw)


# ---------------------------------------------------------------- web pages and connections


@pytest.mark.parametrize("origin, status", [
    ("https://evil.example", 403), ("http://evil.example:8080", 403), ("null", 403),
    ("http://127.0.0.1:3000", 200), ("http://localhost", 200), ("http://[::1]:5173", 200),
    ("vscode-webview://1a2b3c", 200),
])
def test_a_page_of_another_site_may_not_even_send_a_completion(server, origin, status):  # noqa: F811
    """A page's `fetch(url, {mode: "no-cors", body})` with a text/plain body needs no preflight:
    unread, it still ran a completion (or replaced an editor's, naming its slot). Editors send no
    Origin; a loopback page or an editor's webview may."""
    got, raw = request(server.url, "/infill", {"input_prefix": "x = ", "n_predict": 2},
                       headers={"Origin": origin, "Content-Type": "text/plain"})
    assert got == status, raw
    if status == 403:
        assert "another site" in error_text(raw)


def test_no_preflight_lets_a_page_read_an_answer(server):  # noqa: F811
    asks = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    preflight = urllib.request.Request(server.url + "/infill", method="OPTIONS", headers=asks)
    try:
        with urllib.request.urlopen(preflight, timeout=30) as resp:
            status, headers = resp.status, resp.headers
    except urllib.error.HTTPError as exc:
        status, headers = exc.code, exc.headers
    assert status >= 400 and "access-control-allow-origin" not in {k.lower() for k in headers}


def test_half_sent_request_heads_do_not_lock_everyone_out(server):  # noqa: F811
    """uvicorn waits for a request's head forever, and beyond MAX_CONNECTIONS it answers 503:
    that many clients that stop mid-head (a crashed plugin, a slowloris) shut out every editor
    and /health for as long as they keep the connections. The server now closes them."""
    stalled = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(MAX_CONNECTIONS)]
    try:
        for sock in stalled:
            sock.sendall(b"POST /infill HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le")
        deadline = time.monotonic() + 120  # a hang guard: the server closes them after HEADER_TIMEOUT
        for sock in stalled:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            assert sock.recv(1024) == b""
        assert alive(server.url)
    finally:
        for sock in stalled:
            sock.close()


def test_a_slow_request_on_a_kept_connection_is_not_cut(server, talkative_gguf):  # noqa: F811
    """The head timer must not close a connection whose request is being answered (keep-alive,
    a second request on the same connection)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    try:
        for _ in range(2):
            conn.request("POST", "/infill", json.dumps({"input_prefix": PREFIX, "n_predict": 4}),
                         {"Content-Type": "application/json"})
            resp = conn.getresponse()
            assert resp.status == 200 and json.loads(resp.read())["content"] == expected(talkative_gguf, PREFIX, "", 4)
    finally:
        conn.close()


# ---------------------------------------------------------------- key files


def _taken_port() -> tuple[socket.socket, int]:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    return taken, taken.getsockname()[1]


@pytest.mark.parametrize("mode, warned", [(0o644, True), (0o640, True), (0o600, False)])
def test_a_key_file_others_can_read_is_warned_about(talkative_gguf, tmp_path, mode, warned):
    """Read, then the port: a taken port ends the run before the model loads."""
    key_file = tmp_path / "key"
    key_file.write_text("s3cr3t-key\n")
    key_file.chmod(mode)
    taken, port = _taken_port()
    with taken:
        proc = run_cg("serve", str(talkative_gguf), "--port", str(port), "--api-key-file", str(key_file))
    assert proc.returncode == 2 and "is taken" in proc.stderr
    assert ("readable by other users" in proc.stderr) is warned and "s3cr3t-key" not in proc.stderr


def test_a_key_file_that_is_not_one_line_of_key_is_refused_unread(talkative_gguf, tmp_path):
    """A log or an image named by mistake was read whole and taken as a key of any size."""
    key_file = tmp_path / "key"
    key_file.write_text("k" * 100_000)
    key_file.chmod(0o600)
    taken, port = _taken_port()
    with taken:
        proc = run_cg("serve", str(talkative_gguf), "--port", str(port), "--api-key-file", str(key_file))
    assert proc.returncode == 2 and proc.stderr.startswith("Error: the API key file") and "longer than" in proc.stderr


def test_a_key_file_left_by_a_killed_cg_serve_is_removed_by_the_next(tmp_path):
    """`cg serve --llama-server` writes the key to a private file that llama-server reads at
    start-up; killed outright (SIGKILL, the OOM killer) while the model loads, cg could not remove
    it. The next cg serve removes the files of cg serves that no longer run."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    code = ("import os, tempfile; from pathlib import Path; from cg.serve.key import private_key_file; "
            f"Path(tempfile.gettempdir(), 'cg-serve-key-{dead_pid}-old.txt').write_text('k'); "
            f"Path(tempfile.gettempdir(), 'cg-serve-key-{os.getpid()}-live.txt').write_text('k'); "
            "print(private_key_file('new-key'))")
    made = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    new = Path(made.stdout.strip())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([new.name, f"cg-serve-key-{os.getpid()}-live.txt"])
    assert new.read_text() == "new-key\n" and new.stat().st_mode & 0o777 == 0o600


# ---------------------------------------------------------------- clumsy but legitimate clients


# A request that keeps the worker busy for seconds (tokenizing 4 MB), as a long prompt does on a real model.
BUSY = {"input_prefix": "    total = compute(alpha, beta) + 1\n" * 100_000, "n_predict": 2}


def _send(serving, body: dict, path: str = "/infill") -> socket.socket:
    """A request on its own connection, its answer left to read."""
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", serving.port))
    sock.sendall(b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (path.encode(), len(data), data))
    return sock


def _status(sock: socket.socket) -> int:
    sock.settimeout(120)  # a hang guard
    with sock, sock.makefile("rb") as reply:
        return int(reply.readline().split()[1])


@pytest.mark.parametrize("keep_alive, reason", [(None, "load"), (0, "unload")])
def test_an_ollama_generate_without_a_prompt_loads_the_model(server, keep_alive, reason):  # noqa: F811
    """Ollama's API: an empty prompt loads the model (keep_alive 0 unloads it) and answers at once;
    the `ollama` CLI and clients that warm a model up send it. It was a 400 ("empty input")."""
    import ollama

    runs = metrics(server.url)["cg:requests_done_total"]
    answer = ollama.Client(host=server.url).generate(model="codegemma", keep_alive=keep_alive)
    assert answer.done and answer.done_reason == reason and answer.response == "" and answer.eval_count == 0
    assert metrics(server.url)["cg:requests_done_total"] == runs  # the model did not run: the KV is the editor's
    status, raw = request(server.url, "/api/generate", {"model": "codegemma", "prompt": "", "suffix": "x = 1\n",
                                                        "stream": False, "options": {"num_predict": 2}})
    assert status == 200 and json.loads(raw)["done_reason"] != "load"  # a suffix is something to complete


@pytest.mark.parametrize("prefix, suffix", [
    ("a = 1\r\nb\t= ", "\r\n"), ("", "\nprint(1)\n"), ("x\t", "\ty\n"), ("é€\U0001f600 = ", ""), ("a\x00b = ", ""),
    ("<|fim_prefix|>x = ", "<|fim_suffix|>"),
])
def test_the_three_apis_give_cg_completes_text_for_awkward_input(server, talkative_gguf, prefix, suffix):  # noqa: F811
    want = expected(talkative_gguf, prefix, suffix, 5)
    _, infill = post(server.url, "/infill", {"input_prefix": prefix, "input_suffix": suffix, "n_predict": 5})
    _, ollama = post(server.url, "/api/generate", {"prompt": prefix, "suffix": suffix, "stream": False,
                                                   "options": {"num_predict": 5}})
    _, openai = post(server.url, "/v1/completions", {"prompt": prefix, "suffix": suffix, "max_tokens": 5})
    assert infill["content"] == ollama["response"] == openai["choices"][0]["text"] == want


def test_keystrokes_while_the_worker_is_busy_do_not_fill_the_queue(server, talkative_gguf):  # noqa: F811
    """An editor sends a request per keystroke, each replacing the one before for its slot. While
    the worker is busy (a long prompt: seconds on a real model), the replaced requests stayed
    queued, counted against MAX_QUEUE: after 64 keystrokes the newest one got a 503."""
    from cg.serve.slots import MAX_QUEUE

    busy = _send(server, BUSY)
    try:
        processing(server.url)
        keys = [_send(server, {"input_prefix": f"x = {i}", "n_predict": 2, "id_slot": 0}) for i in range(MAX_QUEUE + 8)]
        last = keys.pop()
        assert _status(last) == 200
        assert {_status(sock) for sock in keys} == {200}  # the replaced ones: answered, empty
    finally:
        busy.close()
    idle(server.url)


def test_abandoned_requests_while_the_worker_is_busy_do_not_fill_the_queue(server):  # noqa: F811
    """Continue aborts its last request at each keystroke (the connection closes) and sends the
    next, with no slot to name: those abandoned while the worker was busy stayed queued too."""
    from cg.serve.slots import MAX_QUEUE

    busy = _send(server, BUSY)
    try:
        processing(server.url)
        for i in range(MAX_QUEUE + 8):
            _send(server, {"prompt": f"x = {i}", "max_tokens": 2}, "/v1/completions").close()
            assert alive(server.url)  # also lets the server see the close before the next request
        assert _status(_send(server, {"prompt": "x = ", "max_tokens": 2}, "/v1/completions")) == 200
    finally:
        busy.close()


def test_sigterm_while_the_worker_cannot_stop_at_once_answers_and_exits_cleanly(talkative_gguf):
    """A stop while the worker is in a step it cannot leave (tokenizing 15 MB here; a long
    prompt's evaluation on a real model) outlasted the 5 s the connections get: uvicorn killed
    the waiting handler and logged a traceback. Now the waiting client is answered at once."""
    serving = start(talkative_gguf)
    line = "    total = compute(alpha, beta) + 1\n"
    waiting = _send(serving, {"input_prefix": line * (15 * 2**20 // len(line)), "n_predict": 2})
    try:
        processing(serving.url)
        serving.proc.send_signal(signal.SIGTERM)
        assert _status(waiting) == 503
        _, err = serving.proc.communicate(timeout=120)
    finally:
        waiting.close()
        serving.proc.kill()
    code = serving.proc.returncode
    assert code == 143 and "Stopped cg serve." in err and "Traceback" not in err and "ERROR" not in err, err
