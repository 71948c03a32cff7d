"""`cg serve`, cg's own server, as a real process on the tiny CodeGemma-layout model: the real
`ollama` and `openai` clients and llama.vim-shaped /infill requests get `cg complete`'s text;
warm-up and reuse, cancellation (a closed stream, a newer request for the slot), concurrent
clients, hostile requests, the API key and signals.

One server serves the module (starting one loads the model); tests that need another set-up
(a key, another host) start their own. No timing assertion: a cancelled request is shown to stop
early by the server's own token count (/metrics), and waits have generous hang guards only.
"""

from __future__ import annotations

import http.client
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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cg.complete import Request, complete
from cg.serve.body import MAX_BODY, MAX_EXTRA

from .helpers import ID, run_cg
from .servers import free_port

CTX = 1024
PREFIX = "def add(a, b):\n"
SUFFIX = "\nprint(add(1, 2))\n"
LONG = 800  # tokens a request asks for when it is meant to be cancelled long before the end


@dataclass
class Serving:
    url: str
    proc: subprocess.Popen[str]

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str]:
        self.proc.send_signal(sig)
        try:
            _, err = self.proc.communicate(timeout=60)
        finally:
            self.proc.kill()
        return self.proc.returncode, err


def start(model: Path, *args: str, env: dict[str, str] | None = None) -> Serving:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "cg", "serve", str(model), "--port", str(port), "--ctx", str(CTX),
                             *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    line = proc.stdout.readline()  # the URL, once the model is loaded and the port listens
    if not line:
        proc.kill()
        raise AssertionError(f"cg serve did not start: {proc.communicate()[1]}")
    host = "127.0.0.1" if "--host" not in args else args[args.index("--host") + 1]
    assert line == f"http://{host}:{port}\n"
    return Serving(f"http://127.0.0.1:{port}", proc)


@pytest.fixture(scope="module")
def server(talkative_gguf):
    serving = start(talkative_gguf)
    yield serving
    code, err = serving.stop()
    assert code == 143 and "Stopped cg serve." in err, err
    assert "Traceback" not in err and "Error: cg serve:" not in err, err  # no request met a bug


def request(url: str, path: str, body: Any = None, *, headers: dict[str, str] | None = None,
            timeout: float = 120) -> tuple[int, bytes]:
    """(status, raw body) of a request; a dict body goes as JSON, bytes as they are."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json",
                                                                 **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def post(url: str, path: str, body: Any, **kw: Any) -> tuple[int, dict[str, Any]]:
    status, raw = request(url, path, body, **kw)
    return status, json.loads(raw)


def expected(model: Path, prefix: str, suffix: str, n: int, context: tuple[tuple[str, str], ...] = ()) -> str:
    """What cg's library (the code `cg complete` runs) completes."""
    opts = Request(model=str(model), n_ctx=CTX, max_tokens=n, quiet=True)
    return complete(prefix, suffix, request=replace(opts, context=context)).text


def metrics(url: str) -> dict[str, int]:
    _, raw = request(url, "/metrics")
    return {k: int(v) for k, v in (line.split() for line in raw.decode().splitlines())}


def idle(url: str) -> dict[str, int]:
    """The counters once the worker has nothing running or waiting (hang guard: 120 s)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        m = metrics(url)
        if m["llamacpp:requests_processing"] == 0 and m["llamacpp:requests_deferred"] == 0:
            return m
        time.sleep(0.05)
    raise AssertionError("the server never went idle")


def processing(url: str) -> None:
    deadline = time.monotonic() + 120
    while metrics(url)["llamacpp:requests_processing"] == 0:
        assert time.monotonic() < deadline, "the request never started"
        time.sleep(0.02)


def alive(url: str) -> bool:
    return request(url, "/health", timeout=30) == (200, b'{"status":"ok"}')


# ---------------------------------------------------------------- the clients editors use


def test_cg_complete_and_the_server_give_the_same_text(server, talkative_gguf, tmp_path):
    """The CLI itself once: `cg complete --json` and /infill on the same input (context files
    given nearest first to cg complete, as llama.vim's ring sends them nearest last)."""
    (tmp_path / "util.py").write_text("def helper():\n    return 1\n")
    (tmp_path / "models.py").write_text("class Point:\n    x: int\n")
    proc = run_cg("complete", "-m", str(talkative_gguf), "--ctx", str(CTX), "-n", "12", "--json", "--prefix", PREFIX,
                  "--suffix", SUFFIX, "--context", "models.py", "--context", "util.py", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    want = json.loads(proc.stdout)
    extra = [{"filename": "util.py", "text": "def helper():\n    return 1\n", "time": [1, 2]},
             {"filename": "models.py", "text": "class Point:\n    x: int\n"}]
    status, got = post(server.url, "/infill", {"input_prefix": PREFIX, "input_suffix": SUFFIX, "input_extra": extra,
                                               "n_predict": 12})
    assert status == 200 and got["content"] == want["text"] and want["text"]
    assert got["tokens_evaluated"] == want["prompt_tokens"] and got["tokens_predicted"] == want["completion_tokens"]


@pytest.mark.parametrize("stream", [False, True])
def test_the_ollama_client(server, talkative_gguf, stream):
    import ollama

    client = ollama.Client(host=server.url)
    want = expected(talkative_gguf, PREFIX, SUFFIX, 10)
    options = {"num_predict": 10, "temperature": 0, "stop": ["<|file_separator|>"], "num_ctx": 4096}
    if stream:
        parts = list(client.generate(model="codegemma", prompt=PREFIX, suffix=SUFFIX, options=options, stream=True))
        assert "".join(p.response for p in parts) == want and parts[-1].done and parts[-1].eval_count == 10
        assert all(not p.done for p in parts[:-1]) and len(parts) > 2
    else:
        answer = client.generate(model="codegemma", prompt=PREFIX, suffix=SUFFIX, options=options)
        assert answer.response == want and answer.done and answer.done_reason == "length"
        assert answer.prompt_eval_count > 0
    assert ".Suffix" in client.show("codegemma").template  # Continue sends suffix only then
    assert [m.model for m in client.list().models] == ["talkative-f32"]


@pytest.mark.parametrize("stream", [False, True])
def test_the_openai_client(server, talkative_gguf, stream):
    import openai

    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    want = expected(talkative_gguf, PREFIX, SUFFIX, 10)
    if stream:
        chunks = list(client.completions.create(model="codegemma", prompt=PREFIX, suffix=SUFFIX, max_tokens=10,
                                                stream=True))
        assert "".join(c.choices[0].text for c in chunks) == want
        assert chunks[-1].choices[0].finish_reason == "length"
    else:
        answer = client.completions.create(model="codegemma", prompt=PREFIX, suffix=SUFFIX, max_tokens=10,
                                           temperature=0)
        assert answer.choices[0].text == want and answer.usage.completion_tokens == 10
    assert [m.id for m in client.models.list().data] == ["talkative-f32"]


def test_logit_bias_as_llama_server_and_openai_take_it(server, talkative_gguf):
    """[[id, bias]] (llama-server) and {"id": bias} (OpenAI) are --logit-bias."""
    bias = {ID["fim_sep"]: 50.0}
    opts = Request(model=str(talkative_gguf), n_ctx=CTX, max_tokens=8, quiet=True, logit_bias=bias)
    want = complete(PREFIX, SUFFIX, request=opts)
    assert want.stop_reason == "stop_token"  # the bias made it stop at once
    status, got = post(server.url, "/infill", {"input_prefix": PREFIX, "input_suffix": SUFFIX, "n_predict": 8,
                                               "logit_bias": [[ID["fim_sep"], 50.0]]})
    assert status == 200 and got["content"] == want.text and got["stop_type"] == "eos"
    status, got = post(server.url, "/v1/completions", {"prompt": PREFIX, "suffix": SUFFIX, "max_tokens": 8,
                                                       "logit_bias": {str(ID["fim_sep"]): 50}})
    assert status == 200 and got["choices"][0]["text"] == want.text and got["choices"][0]["finish_reason"] == "stop"


def test_a_llama_vim_infill_request(server, talkative_gguf):
    """llama.vim's request as it builds it (autoload/llama.vim): the line before the cursor in
    `prompt` goes after input_prefix; response_fields flatten paths; the JSON is compact
    (llama.vim looks for `"content":"` before it decodes)."""
    body = {"id_slot": 0, "input_prefix": "import os\n\n", "input_suffix": "\n    return x\n",
            "input_extra": [{"filename": "b.py", "text": "B = 2\n", "time": [0, 0]}], "prompt": "def f(x):",
            "n_predict": 8, "stop": [], "n_indent": 0, "top_k": 40, "top_p": 0.90,
            "samplers": ["top_k", "top_p", "infill"], "stream": False, "cache_prompt": True,
            "t_max_prompt_ms": 500, "t_max_predict_ms": 1000,
            "response_fields": ["content", "timings/prompt_n", "timings/prompt_ms", "timings/prompt_per_token_ms",
                                "timings/prompt_per_second", "timings/predicted_n", "timings/predicted_ms",
                                "timings/predicted_per_token_ms", "timings/predicted_per_second", "truncated",
                                "tokens_cached"]}
    status, raw = request(server.url, "/infill", body)
    got = json.loads(raw)
    assert status == 200 and b'"content":"' in raw
    assert set(got) == set(body["response_fields"])
    assert got["content"] == expected(talkative_gguf, "import os\n\ndef f(x):", "\n    return x\n", 8,
                                      context=(("b.py", "B = 2\n"),))
    assert got["timings/predicted_n"] <= 8 and got["truncated"] is False


def test_warm_up_then_reuse(server, talkative_gguf):
    """n_predict 0 with only extra context (llama.vim's ring update) evaluates that prompt and
    answers without text; the next request with the same chunks reuses it."""
    chunk = "".join(f"def helper_{i}(value):\n    return value * {i}\n\n" for i in range(30))
    extra = [{"filename": "helpers.py", "text": chunk}]
    status, warm = post(server.url, "/infill", {"id_slot": 0, "input_prefix": "", "input_suffix": "",
                                                "input_extra": extra, "n_predict": 0, "response_fields": [""]})
    assert status == 200 and warm == {}
    status, full = post(server.url, "/infill", {"id_slot": 0, "input_prefix": "", "input_suffix": "",
                                                "input_extra": extra, "n_predict": 0})
    assert full["content"] == "" and full["tokens_predicted"] == 0 and full["tokens_cached"] > 128
    status, done = post(server.url, "/infill", {"id_slot": 0, "input_prefix": PREFIX, "input_suffix": SUFFIX,
                                                "input_extra": extra, "n_predict": 6})
    assert status == 200 and done["tokens_cached"] >= 128 and done["timings"]["cache_n"] == done["tokens_cached"]
    assert done["timings"]["prompt_n"] == done["tokens_evaluated"] - done["tokens_cached"]
    assert done["content"] == expected(talkative_gguf, PREFIX, SUFFIX, 6, context=(("helpers.py", chunk),))


def test_splice_reuses_after_a_change_exact_does_not(server, talkative_gguf):
    """A line typed near the top of the file: by default (splicing, as cg complete) the server
    reuses what follows the change; --exact evaluates everything after it again."""
    code = "".join(f"def helper_{i}(value):\n    return value * {i}\n\n" for i in range(20))
    first = {"input_prefix": code, "input_suffix": SUFFIX, "n_predict": 2}
    second = {**first, "input_prefix": "import os\n" + code}
    exact = start(talkative_gguf, "--exact")
    try:
        for url, reused in ((server.url, lambda n: n > 256), (exact.url, lambda n: n < 128)):
            post(url, "/infill", first)
            status, got = post(url, "/infill", second)
            assert status == 200 and reused(got["tokens_cached"]), (url, got["tokens_cached"])
    finally:
        exact.stop()


def test_a_request_replaced_while_its_prompt_is_read_stops_between_two_chunks(talkative_gguf):
    """The next keystroke during a long prompt: the worker stops after the chunk being decoded
    (128 tokens), not after the whole prompt and a first token; the chunks read stay for reuse."""
    from cg.engine.local import engine as local
    from cg.engine.protocol import Sampling, Timings
    from cg.serve.slots import Steered

    engine = local.load(talkative_gguf, n_ctx=1024, n_threads=2)
    try:
        replaced = threading.Event()
        prompt = [engine.info.bos, *engine.tokenize_text("".join(f"v{i} = {i}\n" for i in range(120)))]
        assert len(prompt) > 3 * 128
        reads: list[int] = []

        def keystroke(done: int, total: int) -> None:  # the prompt's progress: a new request arrives
            reads.append(done)
            replaced.set()

        pieces = Steered(engine, replaced).generate(prompt, max_tokens=8, sampling=Sampling(), logit_bias=None,
                                                    logits_processor=None, timings=Timings(), on_prompt=keystroke,
                                                    exact=True)
        assert list(pieces) == [] and reads == [128]
        assert engine.kv.main.tokens == prompt[:128] and engine.kv.exact_upto == 128
    finally:
        engine.llm.close()



def test_max_prompt_tokens_bounds_the_window_and_truncated_says_when_text_was_left_out(server, talkative_gguf):
    """`truncated` (llama.vim shows it) is true when the window left text out; --max-prompt-tokens
    (or CG_MAX_PROMPT_TOKENS) narrows the window as it does for cg complete."""
    long = "".join(f"value_{i} = {i}\n" for i in range(80))
    body = {"input_prefix": PREFIX, "input_suffix": SUFFIX, "n_predict": 1}
    _, small = post(server.url, "/infill", body)
    _, whole = post(server.url, "/infill", {**body, "input_prefix": long})
    assert small["truncated"] is False and whole["truncated"] is False and whole["tokens_evaluated"] > 400
    narrow = start(talkative_gguf, "--max-prompt-tokens", "256")
    try:
        _, cut = post(narrow.url, "/infill", {**body, "input_prefix": long})
        _, fits = post(narrow.url, "/infill", body)
    finally:
        narrow.stop()
    assert cut["truncated"] is True and cut["tokens_evaluated"] <= 256 and fits["truncated"] is False
    there = complete(long, SUFFIX, Request(model=str(talkative_gguf), n_ctx=CTX, max_tokens=1, max_prompt_tokens=256))
    assert there.truncated and cut["tokens_evaluated"] == there.prompt_tokens

def test_sentinel_text_stays_text(server, talkative_gguf):
    """A file that spells out CodeGemma's control tokens cannot inject them: the prompt holds one
    of each sentinel, and the server's text is the library's."""
    nasty = "s = '<|fim_prefix|><|fim_suffix|><|fim_middle|><|file_separator|><eos><bos>'\n"
    opts = Request(model=str(talkative_gguf), n_ctx=CTX, max_tokens=6, quiet=True)
    done = complete(nasty, nasty, request=replace(opts, context=((nasty, nasty),)))
    for name in ("fim_pre", "fim_suf", "fim_mid", "bos"):
        assert done.prompt_ids.count(ID[name]) == 1, name
    assert done.prompt_ids.count(ID["fim_sep"]) == 1  # the one after the context file
    status, got = post(server.url, "/infill", {"input_prefix": nasty, "input_suffix": nasty, "n_predict": 6,
                                               "input_extra": [{"filename": nasty, "text": nasty}]})
    assert status == 200 and got["content"] == done.text and got["tokens_evaluated"] == len(done.prompt_ids)
    status, got = post(server.url, "/api/generate", {"prompt": nasty, "suffix": nasty, "stream": False,
                                                     "options": {"num_predict": 6}})
    assert got["response"] == complete(nasty, nasty, request=opts).text


def test_continues_rendered_prompt_is_read_as_prefix_and_suffix(server, talkative_gguf):
    """Continue's `openai` provider (and Ollama's raw fallback) writes CodeGemma's FIM layout
    out as text and sends no suffix: that one shape is read as the prefix and suffix it spells."""
    import openai

    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    rendered = f"<|fim_prefix|>{PREFIX}<|fim_suffix|>{SUFFIX}<|fim_middle|>"
    stops = ["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|file_separator|>", "<end_of_turn>", "<eos>"]
    answer = client.completions.create(model="codegemma", prompt=rendered, max_tokens=8, stop=stops)
    assert answer.choices[0].text == expected(talkative_gguf, PREFIX, SUFFIX, 8)
    status, got = post(server.url, "/api/generate", {"prompt": rendered, "raw": True, "stream": False,
                                                     "options": {"num_predict": 8}})
    assert status == 200 and got["response"] == answer.choices[0].text


@pytest.mark.parametrize("prompt, parts", [
    ("<|fim_prefix|>a<|fim_suffix|>b<|fim_middle|>", ("a", "b")),
    ("<|fim_prefix|><|fim_suffix|><|fim_middle|>", ("", "")),
    ("<|fim_prefix|>a<|fim_suffix|>b<|fim_suffix|>c<|fim_middle|>", None),  # code that spells a sentinel
    ("<|fim_prefix|>a<|file_separator|>x<|fim_suffix|>b<|fim_middle|>", None),
    ("x<|fim_prefix|>a<|fim_suffix|>b<|fim_middle|>", None),
    ("<|fim_prefix|>a<|fim_suffix|>b", None),
    ("<|fim_prefix|><|fim_middle|>", None),
    ("def f(): pass", None),
])
def test_only_the_whole_rendered_layout_is_read(prompt, parts):
    from cg.serve.body import rendered_fim

    assert rendered_fim(prompt) == parts


# ---------------------------------------------------------------- cancellation and concurrency


def test_a_closed_stream_stops_decoding(server):
    before = idle(server.url)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    conn.request("POST", "/infill", json.dumps({"input_prefix": PREFIX, "input_suffix": SUFFIX, "n_predict": LONG,
                                                "stream": True}), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.readline().startswith(b"data: {")
    conn.close()  # the editor moved on
    after = idle(server.url)
    assert after["llamacpp:tokens_predicted_total"] - before["llamacpp:tokens_predicted_total"] < LONG // 2
    assert alive(server.url)


def test_a_closed_connection_stops_a_whole_answer_too(server):
    before = idle(server.url)
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        body = json.dumps({"prompt": PREFIX, "suffix": SUFFIX, "stream": False, "options": {"num_predict": LONG}})
        sock.sendall(f"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
        processing(server.url)
    after = idle(server.url)
    assert after["llamacpp:tokens_predicted_total"] - before["llamacpp:tokens_predicted_total"] < LONG // 2


def test_a_newer_request_for_the_slot_replaces_the_one_decoding(server, talkative_gguf):
    """The next keystroke: the request decoding for slot 0 ends at once with what it has
    (stop_type none), the new one gets the whole answer, and the prompt the cancelled one read
    is still there to reuse."""
    idle(server.url)
    code = "".join(f"def helper_{i}(value):\n    return value * {i}\n\n" for i in range(12))
    first: dict[str, Any] = {}
    n_old = 400  # with the prompt, within the 1024-token context

    def old() -> None:
        first["answer"] = post(server.url, "/infill", {"id_slot": 0, "input_prefix": code, "input_suffix": SUFFIX,
                                                       "n_predict": n_old})

    thread = threading.Thread(target=old)
    thread.start()
    processing(server.url)
    assert alive(server.url)  # /health answers while the worker decodes
    status, new = post(server.url, "/infill", {"id_slot": 0, "input_prefix": code + "x = ", "input_suffix": SUFFIX,
                                               "n_predict": 5})
    thread.join(120)
    old_status, replaced = first["answer"]
    assert old_status == 200 and replaced["stop_type"] == "none" and replaced["tokens_predicted"] < n_old // 2
    assert status == 200 and new["content"] == expected(talkative_gguf, code + "x = ", SUFFIX, 5)
    assert new["tokens_cached"] >= 128


def test_requests_for_other_slots_wait_their_turn(server):
    idle(server.url)
    first: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: first.setdefault("answer", post(
        server.url, "/infill", {"id_slot": 1, "input_prefix": PREFIX, "n_predict": 40})))
    thread.start()  # running or still queued when the next one comes: either way it is not replaced
    status, other = post(server.url, "/infill", {"id_slot": 2, "input_prefix": "x = ", "n_predict": 3})
    thread.join(120)
    assert status == 200 and other["tokens_predicted"] == 3
    assert first["answer"][1]["tokens_predicted"] == 40 and first["answer"][1]["stop_type"] == "limit"


def test_eight_concurrent_clients_all_get_their_answers(server, talkative_gguf):
    import ollama
    import openai

    prefixes = [f"def f{i}(x):\n    y = x * {i}\n" for i in range(8)]

    def ask(i: int) -> str:
        prefix = prefixes[i]
        if i % 3 == 0:
            return ollama.Client(host=server.url).generate(model="m", prompt=prefix, suffix=SUFFIX,
                                                           options={"num_predict": 6}).response
        if i % 3 == 1:
            client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
            return client.completions.create(model="m", prompt=prefix, suffix=SUFFIX, max_tokens=6).choices[0].text
        return post(server.url, "/infill", {"input_prefix": prefix, "input_suffix": SUFFIX, "n_predict": 6})[1][
            "content"]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(8)))
    assert answers == [expected(talkative_gguf, p, SUFFIX, 6) for p in prefixes]


# ---------------------------------------------------------------- hostile requests


@pytest.mark.parametrize("path, body, status", [
    ("/infill", b"{not json", 400),
    ("/infill", b"[1, 2]", 400),
    ("/infill", b"", 400),
    ("/infill", b"\xff\xfe{}", 400),
    ("/infill", b"[" * 100_000, 400),
    ("/infill", b'{"input_prefix": "x", "temperature": NaN}', 400),
    ("/infill", b'{"input_prefix": "x", "temperature": 1e999}', 400),
    ("/infill", {"input_prefix": 5}, 400),
    ("/infill", {"input_prefix": "x", "n_predict": "8"}, 400),
    ("/infill", {"input_prefix": "x", "n_predict": True}, 400),
    ("/infill", {"input_prefix": "x", "n_predict": 10**9}, 400),
    ("/infill", {"input_prefix": "x", "n_predict": 4096}, 400),  # no room for the prompt in 1024 tokens
    ("/infill", {"input_prefix": "x", "input_extra": "x"}, 400),
    ("/infill", {"input_prefix": "x", "input_extra": [{"filename": "a", "text": 1}]}, 400),
    ("/infill", {"input_prefix": "x", "input_extra": [{"filename": "a", "text": "b"}] * (MAX_EXTRA + 1)}, 400),
    ("/infill", {"input_prefix": "x", "id_slot": 10**6}, 400),
    ("/infill", {"input_prefix": "x", "id_slot": -2}, 400),
    ("/infill", {"input_prefix": "x", "top_p": 2}, 400),
    ("/infill", {"input_prefix": "x", "stop": [1]}, 400),
    ("/infill", {"input_prefix": "x", "stream": "yes"}, 400),
    ("/infill", {"input_prefix": " ", "input_suffix": ""}, 400),  # nothing to complete
    ("/infill", {"input_prefix": "x", "logit_bias": [[10**6, 1.0]]}, 400),  # not in the vocabulary
    ("/infill", {"input_prefix": "x", "logit_bias": [[70]]}, 400),
    ("/infill", {"input_prefix": "x", "logit_bias": {"²": 1}}, 400),
    ("/infill", {"input_prefix": "x", "logit_bias": {"9" * 5000: 1}}, 400),
    ("/infill", {"input_prefix": "x", "logit_bias": [[70, "big"]]}, 400),
    ("/api/generate", {"prompt": "x", "options": []}, 400),
    ("/api/generate", {"prompt": "x", "options": {"num_predict": 1.5}}, 400),
    ("/api/generate", {"prompt": ["x"]}, 400),
    ("/v1/completions", {"prompt": [1, 2, 3]}, 400),
    ("/v1/completions", {"prompt": "x", "n": 2}, 400),
    ("/v1/completions", {"prompt": "x", "max_tokens": -5}, 400),
    ("/v1/nothing", {}, 404),
])
def test_a_bad_request_is_a_json_error_and_the_server_stays_up(server, path, body, status):
    got, raw = request(server.url, path, body)
    error = json.loads(raw)["error"]
    assert got == status and (error if isinstance(error, str) else error["message"])
    assert b"Traceback" not in raw and alive(server.url)


def test_a_huge_body_is_refused_unread(server):
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(f"POST /infill HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {MAX_BODY + 1}\r\n\r\n".encode())
        reply = sock.makefile("rb").readline()
    assert reply.startswith(b"HTTP/1.1 413")
    assert alive(server.url)


def test_a_huge_chunked_body_is_cut_off(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    chunks = (b"x" * 2**20 for _ in range(MAX_BODY // 2**20 + 2))
    try:
        conn.request("POST", "/infill", body=chunks, headers={"Content-Type": "application/json"},
                     encode_chunked=True)
        assert conn.getresponse().status == 413
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered and closed while the rest was still on its way
    finally:
        conn.close()
    assert alive(server.url)


def test_slow_clients_hold_only_their_own_connection(server, talkative_gguf):
    """One client never sends the rest of its body, another never reads its stream: others are
    answered meanwhile."""
    with socket.create_connection(("127.0.0.1", server.port)) as stalled, \
            socket.create_connection(("127.0.0.1", server.port)) as deaf:
        stalled.sendall(b"POST /infill HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n{\"input_")
        body = json.dumps({"input_prefix": PREFIX, "n_predict": 200, "stream": True})
        deaf.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        deaf.sendall(f"POST /infill HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode())
        assert alive(server.url)
        status, got = post(server.url, "/infill", {"input_prefix": "y = ", "n_predict": 4})
        assert status == 200 and got["content"] == expected(talkative_gguf, "y = ", "", 4)
    assert alive(server.url)


def test_a_page_that_rebinds_its_name_to_loopback_is_refused(server):
    status, got = post(server.url, "/infill", {"input_prefix": "x"}, headers={"Host": "evil.example:8080"})
    assert status == 403 and "loopback" in got["error"]["message"]


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                    | st.text(max_size=20), lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)
FIELDS = {
    "/infill": ["input_prefix", "input_suffix", "input_extra", "prompt", "n_predict", "temperature", "top_k",
                "top_p", "stop", "id_slot", "stream", "response_fields", "t_max_predict_ms", "samplers", "seed"],
    "/api/generate": ["prompt", "suffix", "raw", "stream", "options", "model", "template", "keep_alive"],
    "/v1/completions": ["prompt", "suffix", "max_tokens", "temperature", "top_p", "stop", "stream", "n", "seed"],
}
LIMITS = {"/infill": "n_predict", "/api/generate": "num_predict", "/v1/completions": "max_tokens"}


@pytest.mark.parametrize("path", list(FIELDS))
def test_any_json_gets_an_answer_or_a_4xx(server, path):
    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.dictionaries(st.sampled_from(FIELDS[path]), JSON, max_size=6))
    def check(body: dict[str, Any]) -> None:
        body = {**body, "stream": False} if not isinstance(body.get("stream"), bool) else body
        holder = body.setdefault("options", {}) if path == "/api/generate" else body
        if isinstance(holder, dict):
            holder[LIMITS[path]] = 2  # a valid request runs briefly
        status, raw = request(server.url, path, body)
        assert status in (200, 400), raw
        if status == 400 or not body.get("stream"):
            json.loads(raw)
        assert b"Traceback" not in raw

    check()
    assert alive(server.url)


# ---------------------------------------------------------------- the key, the host, signals


def test_the_api_key(talkative_gguf):
    import ollama
    import openai

    key = "s3cr3t-key,with-comma"
    serving = start(talkative_gguf, env={"CG_API_KEY": key})
    try:
        assert key not in Path(f"/proc/{serving.proc.pid}/cmdline").read_text()
        assert alive(serving.url)  # health answers without a key, as llama-server's does
        body = {"input_prefix": PREFIX, "n_predict": 3}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": key}, {"X-Api-Key": key[:-1]}):
            status, got = post(serving.url, "/infill", body, headers=headers)
            assert status == 401 and got["error"]["type"] == "authentication_error"
        assert post(serving.url, "/infill", body, headers={"Authorization": f"Bearer {key}"})[0] == 200
        assert request(serving.url, "/api/tags")[0] == 401
        answer = ollama.Client(host=serving.url, headers={"Authorization": f"Bearer {key}"}).generate(
            model="m", prompt=PREFIX, options={"num_predict": 3})
        assert answer.eval_count == 3
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=serving.url + "/v1", api_key="wrong").completions.create(model="m", prompt="x")
    finally:
        code, err = serving.stop(signal.SIGINT)
    assert code == 130 and "Stopped cg serve." in err and "Error: interrupted" in err


def test_beyond_loopback_without_a_key_it_warns(talkative_gguf):
    serving = start(talkative_gguf, "--host", "0.0.0.0")
    try:
        status, _ = post(serving.url, "/infill", {"input_prefix": PREFIX, "n_predict": 2},
                         headers={"Host": "my-box:8080"})  # the name check holds for loopback only
        assert status == 200
    finally:
        code, err = serving.stop(signal.SIGHUP)
    assert "Warning: listening on 0.0.0.0 without an API key" in err
    assert code == 129 and "Error: hung up" in err


def test_sigterm_while_decoding_stops_at_once(talkative_gguf):
    """A supervisor's stop while a long completion decodes: the job is cancelled, the stream
    ends, cg serve exits 143 and the port is free."""
    serving = start(talkative_gguf)
    conn = http.client.HTTPConnection("127.0.0.1", serving.port, timeout=120)
    try:
        conn.request("POST", "/infill", json.dumps({"input_prefix": PREFIX, "n_predict": LONG, "stream": True}),
                     {"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.readline().startswith(b"data: ")
        code, err = serving.stop(signal.SIGTERM)
    finally:
        conn.close()
    assert code == 143 and "Stopped cg serve." in err and "Traceback" not in err
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", serving.port))  # nothing holds the port


# ---------------------------------------------------------------- refusals before anything starts


@pytest.mark.parametrize("args, said", [
    (["--jobs", "2"], "Error: cg's own server decodes one sequence at a time"),
    (["--api-key", "sekret"], "No such option '--api-key'"),
    (["--llama-server", "--server", "http://127.0.0.1:9"], "--llama-server and --server contradict each other"),
])
def test_refused_options(talkative_gguf, args, said):
    proc = run_cg("serve", str(talkative_gguf), "--port", str(free_port()), *args)
    assert proc.returncode == 2 and said in proc.stderr and "sekret" not in proc.stderr


@pytest.mark.parametrize("content, said", [
    ("", "is empty"), ("one\ntwo\n", "line break"), ("#comment\n", "starts with #"), (" key\n", "space"),
    ("clé\n", "non-ASCII"),
])
def test_a_bad_key_file_is_refused(talkative_gguf, tmp_path, content, said):
    key_file = tmp_path / "key"
    key_file.write_text(content, encoding="utf-8")
    proc = run_cg("serve", str(talkative_gguf), "--port", str(free_port()), "--api-key-file", str(key_file))
    assert proc.returncode == 2 and proc.stderr.startswith("Error: the API key in") and said in proc.stderr


def test_a_gateway_to_a_server_that_does_not_answer_is_a_clean_error():
    port = free_port()
    proc = run_cg("serve", "--server", f"http://127.0.0.1:{free_port()}", "--port", str(port))
    assert proc.returncode == 5 and proc.stderr.startswith("Error: cannot reach the server at"), proc.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # released


def test_a_taken_port_is_a_clean_error(talkative_gguf):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_cg("serve", str(talkative_gguf), "--port", str(port))
    assert proc.returncode == 2 and proc.stderr.startswith(f"Error: port {port} on 127.0.0.1 is taken")
