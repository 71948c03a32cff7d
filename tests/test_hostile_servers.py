"""Servers that lie or stall: keep-alives forever, malformed events, wrong types, empty model
lists, text without token ids; and credentials in the server's URL. A stand-in speaking
llama-server's native API and /v1/completions (no real server misbehaves on demand); every case
must end in one `Error:` naming the server and what it sent, within the time cg was given, and
never print a password or key."""

from __future__ import annotations

import base64
import json
import threading
import time
from http.server import ThreadingHTTPServer
from typing import ClassVar
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cg.engine.remote.client import display_url, open_server
from cg.errors import UsageError

from .helpers import run_cg
from .servers import JsonHandler, free_port

SPECIALS = {"<bos>": 2, "<eos>": 1, "<|fim_prefix|>": 67, "<|fim_middle|>": 68, "<|fim_suffix|>": 69,
            "<|file_separator|>": 70}


class _Hostile(JsonHandler):
    protocol_version = "HTTP/1.1"
    mode = "pings"
    props: ClassVar[dict] = {"default_generation_settings": {"n_ctx": 1024}}
    models: ClassVar[list] = [{"id": "m"}]
    seen: ClassVar[list] = []  # (method, path, Authorization header, JSON body) of every request
    refuse = False  # answer 401 to everything
    count_nothing = False  # /tokenize gives no ids for plain text

    def _record(self, body: object = None) -> bool:
        """Record the request; True when it is to be refused."""
        self.seen.append((self.command, self.path, self.headers.get("Authorization"), body))
        if self.refuse:
            self._json(401, {"error": {"message": "Invalid API Key"}})
        return self.refuse

    def do_GET(self):
        if self._record():
            return None
        if self.path == "/props":
            return self._json(200, self.props)
        if self.path == "/v1/models":
            return self._json(200, {"data": self.models})
        return self._json(404, {"error": "not found"})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        if self._record(body):
            return None
        if self.path == "/tokenize":
            text = body.get("content", "")
            special = body.get("parse_special") and text in SPECIALS
            if self.count_nothing and not special:
                return self._json(200, {"tokens": []})
            return self._json(200, {"tokens": [SPECIALS[text]] if special else [ord(c) % 200 + 100 for c in text]})
        if self.path == "/detokenize":
            return self._json(200, {"content": next((t for t, i in SPECIALS.items() if [i] == body["tokens"]), "")})
        if self.path in ("/completion", "/v1/completions"):
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
            "one-token": [b'data: {"content": "1", "tokens": [149]}\n\n',
                          b'data: {"content": "", "tokens": [1], "stop": true, "stop_type": "eos"}\n\n'],
            "huge-no-ids": [b'data: {"content": "' + b"z" * 966 + b'"}\n\n'],
        }.get(self.mode)
        no_ids = {"no-ids": b'data: {"content": "abcd"}\n\n',
                  "openai-no-ids": b'data: {"choices": [{"text": "abcd", "finish_reason": null}]}\n\n'}.get(self.mode)
        try:
            if no_ids is not None:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:  # text without ids, forever (as far as cg can tell)
                    self._chunk(no_ids)
                    time.sleep(0.02)
                return
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
    _Hostile.seen, _Hostile.refuse, _Hostile.count_nothing = [], False, False


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


# Text without token ids: cg counts the tokens itself (through the server's tokenizer, which the
# stand-in maps one character to one id), and sends the limit so an honest server stops on its own.

def _completion_requests() -> list[dict]:
    return [body for _m, path, _a, body in _Hostile.seen if path in ("/completion", "/v1/completions")]


@pytest.mark.parametrize("mode, url, sent", [("no-ids", "", "n_predict"),
                                             ("openai-no-ids", "/v1", "max_tokens"),
                                             ("huge-no-ids", "", "n_predict")])
def test_max_tokens_ends_a_stream_of_text_without_ids(hostile, mode, url, sent):
    _Hostile.mode = mode
    proc = run_cg("complete", "--server", hostile + url, "--prefix", "x = ", "-n", "8", "--json",
                  env={"CG_SERVER_TIMEOUT": "50"}, timeout=120)  # the timeouts only guard against a hang
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["stop_reason"] == "max_tokens" and result["text"] == ("z" * 8 if "huge" in mode else "abcdabcd")
    assert [body[sent] for body in _completion_requests()] == [8]


def test_text_without_ids_counts_one_token_at_least_when_the_tokenizer_counts_nothing(hostile):
    """A /tokenize that answers [] for text cannot stretch the limit."""
    _Hostile.mode = "no-ids"
    _Hostile.count_nothing = True
    proc = run_cg("complete", "--server", hostile, "--prefix", "x = ", "-n", "3", "--json",
                  env={"CG_SERVER_TIMEOUT": "50"}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["text"] == "abcd" * 3


# Credentials in the URL: sent as HTTP Basic auth, never printed.

PASSWORD = "S3cr3tPw"
KEY = "k3y-Secret-9"


def _with_password(url: str, password: str = PASSWORD) -> str:
    return url.replace("http://", f"http://alice:{password}@")


def _no_secret(proc, *secrets: str) -> None:
    for secret in secrets or (PASSWORD, KEY):
        assert secret not in proc.stdout and secret not in proc.stderr, (proc.stdout, proc.stderr)


def test_url_credentials_are_sent_as_basic_auth_and_never_shown(hostile):
    _Hostile.mode = "one-token"
    proc = run_cg("complete", "--server", _with_password(hostile), "--prefix", "x = ", "--json", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["server"] == hostile
    expected = "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    assert _Hostile.seen and {auth for _m, _p, auth, _b in _Hostile.seen} == {expected}
    _no_secret(proc)


def test_an_api_key_is_sent_as_a_bearer_token(hostile):
    _Hostile.mode = "one-token"
    proc = run_cg("complete", "--server", hostile, "--prefix", "x = ", env={"CG_API_KEY": KEY}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert {auth for _m, _p, auth, _b in _Hostile.seen} == {f"Bearer {KEY}"}
    _no_secret(proc)


def test_a_refused_password_or_key_is_not_printed(hostile):
    _Hostile.refuse = True
    for args, env in (((_with_password(hostile),), {}), ((hostile,), {"CG_API_KEY": KEY})):
        proc = run_cg("complete", "--server", *args, "--prefix", "x", env=env, timeout=120)
        assert proc.returncode == 3 and proc.stderr.startswith(f"Error: the server at {hostile} refused"), proc.stderr
        _no_secret(proc)


@pytest.mark.parametrize("mode", ["unreachable", "timeout", "malformed"])
def test_errors_name_the_server_without_its_password(hostile, mode):
    _Hostile.mode = {"timeout": "pings", "malformed": "bad-json"}.get(mode, "pings")
    url = f"http://127.0.0.1:{free_port()}" if mode == "unreachable" else hostile
    proc = run_cg("complete", "--prefix", "x", env={"CG_SERVER": _with_password(url), "CG_SERVER_TIMEOUT": "3"},
                  timeout=120)
    assert proc.returncode in (1, 5) and proc.stderr.startswith("Error: ") and f"server at {url}" in proc.stderr
    _no_secret(proc)


def test_doctor_shows_the_server_without_its_password(hostile):
    proc = run_cg("doctor", env={"CG_SERVER": _with_password(hostile), "CG_API_KEY": KEY}, timeout=120)
    assert f"CG_SERVER={hostile}" in proc.stdout and "CG_API_KEY=***" in proc.stdout
    _no_secret(proc)


def test_a_password_and_an_api_key_together_are_refused(hostile):
    proc = run_cg("complete", "--server", _with_password(hostile), "--api-key", KEY, "--prefix", "x", timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("Error: ") and "Traceback" not in proc.stderr
    assert not _Hostile.seen  # nothing sent: cg does not pick one of them
    _no_secret(proc)


@pytest.mark.parametrize("url", [
    "http://alice:pa/ss@127.0.0.1:1",  # a raw / in the password: its host would be alice, its port "pa"
    "http://alice:S3cr3tPw@127.0.0.1:99999",
    "http://alice:S3cr3tPw@127.0.0.1:1/?token=S3cr3tPw",
    "http://alice:S3cr3tPw@127.0.0.1:1#S3cr3tPw",
    "ftp://alice:S3cr3tPw@127.0.0.1:1",
    "http://alice:S3cr3tPw@[::1:1",
    "http://alice:S3cr3tPw@",
])
def test_malformed_server_urls_are_refused_without_their_password(url):
    proc = run_cg("complete", "--server", url, "--prefix", "x", timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("Error: ") and "Traceback" not in proc.stderr, proc.stderr
    _no_secret(proc, "S3cr3tPw", "pa/ss")


def test_an_api_key_that_cannot_be_a_header_is_refused_without_showing_it(hostile):
    proc = run_cg("complete", "--server", hostile, "--api-key", "k3y\r\nX-Evil: 1", "--prefix", "x", timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("Error: ") and "k3y" not in proc.stderr, proc.stderr
    assert not _Hostile.seen


@settings(max_examples=300, deadline=None)
@given(user=st.text(max_size=12), password=st.text(max_size=12), encode=st.booleans(), api_key=st.booleans(),
       tail=st.sampled_from(["", "/", "/v1", ":8080", ":8080/v1/", ":x", "/?q=1", "#f", "@h"]))
def test_no_url_shows_its_password(user, password, encode, api_key, tail):
    """Whatever the URL holds, what cg prints of it (and of the connection it makes) has no password."""
    secret = "Pw" + password + "Zq"
    userinfo = f"{quote(user, safe='')}:{quote(secret, safe='')}" if encode else f"{user}:{secret}"
    url = f"http://{userinfo}@host{tail}"
    hidden = [secret, quote(secret, safe="")]
    assert not any(h in display_url(url) for h in hidden)
    try:
        http = open_server(url, "k3y" if api_key else None)
    except UsageError as exc:
        assert not any(h in exc.message or h in exc.hint for h in hidden)
        return
    assert not any(h in http.base or h in repr(http) for h in hidden) and not api_key
    assert http.base.startswith("http://host") or "@" in tail
    if encode and "@" not in tail:  # (else the password runs to the last @: "...Zq@host")
        expected = base64.b64encode(f"{user}:{secret}".encode()).decode()
        assert http.authorization == f"Basic {expected}"


def test_run_options_repr_shows_no_key_or_server_password():
    from cg.request import Request

    shown = repr(Request(server="http://alice:S3cr3tPw@127.0.0.1:1", api_key="k3y-s3cret"))
    assert "S3cr3tPw" not in shown and "k3y-s3cret" not in shown
