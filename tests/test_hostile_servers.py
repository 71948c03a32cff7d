"""Servers that lie or stall: keep-alives forever, malformed events, wrong types, empty model
lists. A stand-in speaking llama-server's native API (no real server misbehaves on demand); every
case must end in one `Error:` naming the server and what it sent, within the time cg was given."""

from __future__ import annotations

import json
import threading
import time
from http.server import ThreadingHTTPServer
from typing import ClassVar

import pytest

from .helpers import run_cg
from .servers import JsonHandler

SPECIALS = {"<bos>": 2, "<eos>": 1, "<|fim_prefix|>": 67, "<|fim_middle|>": 68, "<|fim_suffix|>": 69,
            "<|file_separator|>": 70}


class _Hostile(JsonHandler):
    protocol_version = "HTTP/1.1"
    mode = "pings"
    props: ClassVar[dict] = {"default_generation_settings": {"n_ctx": 1024}}
    models: ClassVar[list] = [{"id": "m"}]


    def do_GET(self):
        if self.path == "/props":
            return self._json(200, self.props)
        if self.path == "/v1/models":
            return self._json(200, {"data": self.models})
        return self._json(404, {"error": "not found"})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        if self.path == "/tokenize":
            text = body.get("content", "")
            special = body.get("parse_special") and text in SPECIALS
            return self._json(200, {"tokens": [SPECIALS[text]] if special else [ord(c) % 200 + 100 for c in text]})
        if self.path == "/detokenize":
            return self._json(200, {"content": next((t for t, i in SPECIALS.items() if [i] == body["tokens"]), "")})
        if self.path == "/completion":
            return self._stream()
        return self._json(404, {"error": "not found"})

    def _stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        events = {
            "bad-json": [b"data: {not json\n\n"],
            "number": [b"data: 5\n\n"],
            "string-ids": [b'data: {"content": "a", "tokens": ["7"]}\n\n'],
            "null-content": [b'data: {"content": null, "tokens": [120]}\n\n'],
            "negative-cache": [b'data: {"content": "a", "tokens": [120], "timings": {"cache_n": -1}}\n\n'],
            "nan-cache": [b'data: {"content": "a", "tokens": [120], "timings": {"cache_n": NaN}}\n\n'],
            "list-timings": [b'data: {"content": "a", "tokens": [120], "timings": [3]}\n\n'],
        }.get(self.mode)
        try:
            if events is not None:
                for event in events:
                    self._chunk(event)
                time.sleep(30)
                return
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # a keep-alive twice a second, nothing else
                self._chunk(b": ping\n\n" if self.mode == "pings" else b"data: \n\n")
                time.sleep(0.5)
        except OSError:
            pass  # cg hung up: as it should

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


@pytest.fixture()
def hostile():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    _Hostile.mode, _Hostile.props, _Hostile.models = "pings", {"default_generation_settings": {"n_ctx": 1024}}, \
        [{"id": "m"}]


@pytest.mark.parametrize("mode", ["pings", "empty-data"])
def test_keep_alives_cannot_hold_cg_past_its_timeout(hostile, mode):
    _Hostile.mode = mode
    start = time.monotonic()
    proc = run_cg("complete", "--server", hostile, "--prefix", "x = ", env={"CG_SERVER_TIMEOUT": "3"}, timeout=60)
    took = time.monotonic() - start
    assert proc.returncode == 5 and "did not finish answering in time" in proc.stderr and hostile in proc.stderr
    assert took < 15, took


@pytest.mark.parametrize("mode", ["pings", "empty-data"])
def test_max_time_holds_on_a_server_that_goes_quiet(hostile, mode):
    _Hostile.mode = mode
    start = time.monotonic()
    proc = run_cg("complete", "--server", hostile, "--prefix", "x = ", "--max-time", "2", "--json", timeout=60)
    took = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["stop_reason"] == "time_limit" and took < 15, took


@pytest.mark.parametrize("mode, said", [
    ("bad-json", "an event that is not JSON: '{not json'"),
    ("number", "an event that is not a JSON object: '5'"),
    ("string-ids", "token ids that are not whole numbers"),
    ("null-content", "text that is not a string"),
    ("negative-cache", "a cached token count that is not a non-negative whole number: '-1'"),
    ("nan-cache", "a cached token count that is not a non-negative whole number"),
    ("list-timings", "timings that is not a JSON object"),
])
def test_malformed_events_name_the_server_and_what_it_sent(hostile, mode, said):
    _Hostile.mode = mode
    proc = run_cg("complete", "--server", hostile, "--prefix", "x = ", timeout=60)
    error = proc.stderr.splitlines()[0]
    assert proc.returncode == 1 and error.startswith(f"Error: the server at {hostile} sent "), proc.stderr
    assert said in error and "Error" not in error[7:] and "Traceback" not in proc.stderr


@pytest.mark.parametrize("props, said", [
    ({"default_generation_settings": {"n_ctx": "big"}}, "a context size that is not a positive whole number: 'big'"),
    ({"default_generation_settings": {"n_ctx": -5}}, "a context size that is not a positive whole number"),
    ({"default_generation_settings": []}, "generation settings that is not a JSON object"),
])
def test_wrong_types_in_what_a_server_describes(hostile, props, said):
    _Hostile.props = props
    proc = run_cg("complete", "--server", hostile, "--prefix", "x = ", timeout=60)
    assert proc.returncode == 1 and said in proc.stderr.splitlines()[0], proc.stderr


def test_a_server_that_lists_no_models(hostile):
    _Hostile.models = []
    proc = run_cg("complete", "--server", f"{hostile}/v1", "--prefix", "x", timeout=60)
    assert proc.returncode == 4 and proc.stderr.startswith(f"Error: the server at {hostile}/v1 lists no models")
