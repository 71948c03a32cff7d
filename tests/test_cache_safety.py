"""The on-disk prompt cache against what a fresh run computes and against hostile folders
(issue 28): exact after a disk hit on a sliding-window model, private whatever the umask, never
blocked by a FIFO or led by a link, and crafted entries dropped with one warning."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cg.engine.local import engine as local
from cg.engine.local.prompt_cache import DamagedEntry, PromptCache, _header
from cg.errors import HomeError
from cg.models import store
from cg_core.atomic import stage, write_atomic

from .helpers import NO_STOPS, first_logits


def _lines(n: int) -> list[str]:
    return [f"def f{i}(x):\n    return x * {i} + {i * 7 % 13}\n\n" for i in range(n)]


def _file(body_lines: int, cursor_line: str = "", at: int | None = None) -> str:
    lines = _lines(body_lines)
    at = body_lines * 2 // 3 if at is None else at
    return "".join(lines[:at]) + cursor_line + "<CURSOR>\n" + "".join(lines[at:])


def _cg(model: Path, home: Path, text: str, *extra: str, n: int = 6, umask: int | None = None,
        **env: str) -> subprocess.CompletedProcess[str]:
    """One `cg complete --json` process; the timeout only guards against a hang."""
    return subprocess.run([sys.executable, "-m", "cg", "complete", "-m", str(model), "--json", "-n", str(n),
                           "--ctx", "2048", *extra], input=text, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "CG_HOME": str(home), **env},
                          preexec_fn=None if umask is None else lambda: os.umask(umask))


def _ok(proc: subprocess.CompletedProcess[str]) -> dict:
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    data["stderr"] = proc.stderr
    return data


@pytest.fixture()
def run(tiny_gguf, tmp_path):
    home = tmp_path / "home"

    def complete(text: str, **env: str) -> dict:
        return _ok(_cg(tiny_gguf, home, text, *NO_STOPS, **env))

    complete.home = home  # type: ignore[attr-defined]
    return complete


def _folder(home: Path) -> Path:
    [folder] = (home / "prompt-cache").iterdir()
    return folder


# --- 1. exact after a disk hit, for every model cg loads -------------------------------------

def _prompts(engine) -> tuple[list[int], list[int]]:
    """A 1500-token prompt (three windows of the 270M's 512) and one sharing its first 700."""
    first = [engine.info.bos, *engine.tokenize_text("".join(_lines(80)))]
    second = [*first[:700], *engine.tokenize_text("".join(f"v{i} = [{i}] * {i}\n" for i in range(40)))]
    assert len(first) > 3 * 512 - 100 and len(second) > 800
    return first, second


def test_a_disk_hit_on_the_sliding_window_270m_gives_a_fresh_runs_logits(bundled_gguf, tmp_path):
    """llama.cpp's state of one sequence leaves out the sliding-window cells its window has
    passed: restored and cut to 512 cells it held 1.6 MB against 9.4 MB live, and the next
    tokens attended to nothing there. The saved state now restores to the live one, cut or not."""
    engine = local.load(bundled_gguf, n_ctx=2048, n_threads=2)
    import llama_cpp

    assert llama_cpp.llama_model_n_swa(engine.llm.model) > 0
    kv, cache = engine.kv, PromptCache(tmp_path / "pc" / "key", "key", 2**30)
    first, second = _prompts(engine)
    kv.clear()
    fresh, t = first_logits(engine, second)
    assert t.cached_tokens == 0
    kv.clear()
    first_logits(engine.with_prompt_cache(cache), first)  # evaluated fresh, saved
    [entry] = cache.entries(2048, engine.info.n_vocab)
    saved = cache.read_state(entry)
    assert saved is not None and len(entry.tokens) == len(first)
    # The live state cut to 512 cells, and the saved one restored and cut the same way: equal.
    kv.cells.remove(-1, 512)
    live_cut = kv.cells.state()
    assert kv.restore(entry.tokens, saved) and kv.cells.span(0) == (0, len(first) - 1)
    kv.cells.remove(-1, 512)
    assert kv.cells.state() == live_cut
    # A new process (nothing in memory) shares the first 640 tokens from the disk: the logits
    # are a fresh run's, bit for bit.
    kv.clear()
    again, t = first_logits(engine.with_prompt_cache(cache), second)
    assert t.cached_tokens == 640 and t.reuse == "prefix"
    assert np.array_equal(again, fresh)
    engine.llm.close()


def test_a_state_that_lost_cells_is_never_saved_or_cut(bundled_gguf, tmp_path):
    """Without a full-size sliding-window cache llama.cpp overwrites the cells its window has
    passed: no prefix of such a state is what a fresh run computes, so it is neither saved nor
    cut for exact reuse."""
    engine = local.load(bundled_gguf, n_ctx=2048, n_threads=2, swa_full=False)
    import llama_cpp

    kv, cache = engine.kv, PromptCache(tmp_path / "pc" / "key", "key", 2**30)
    first, second = _prompts(engine)
    kv.clear()
    fresh, _ = first_logits(engine, second)
    kv.clear()
    first_logits(engine.with_prompt_cache(cache), first)
    assert llama_cpp.llama_memory_seq_pos_min(llama_cpp.llama_get_memory(engine.llm.ctx), 0) > 0  # cells gone
    assert not list(cache.folder.glob("*.kv"))
    again, t = first_logits(engine.with_prompt_cache(cache), second)
    assert t.cached_tokens == 0 and np.array_equal(again, fresh)
    engine.llm.close()


def test_a_second_completion_after_a_disk_hit_on_the_270m_prints_a_fresh_runs_text(bundled_gguf, tmp_path):
    """The issue's case: a completion two lines below an earlier one, on the bundled model, in
    real code (the standard library's textwrap; on Python 3.11 this one printed other text before the fix)."""
    import textwrap

    lines = Path(textwrap.__file__).read_text(encoding="utf-8").splitlines(keepends=True)[:140]
    home = tmp_path / "home"
    _ok(_cg(bundled_gguf, home, "".join([*lines[:100], "<CURSOR>", *lines[100:]]), n=16))
    moved = "".join([*lines[:102], "<CURSOR>", *lines[102:]])
    second = _ok(_cg(bundled_gguf, home, moved, n=16))
    assert second["timings"]["cached_tokens"] >= 768, second  # from the disk, cut well before its end
    assert second["text"] == _ok(_cg(bundled_gguf, home, moved, n=16, CG_PROMPT_CACHE="0"))["text"]


# --- 2. private whatever the umask ------------------------------------------------------------

def _modes(folder: Path) -> dict[str, int]:
    """The modes of prompt-cache/, the model's folder and everything in it, by name."""
    return {p.name: stat.S_IMODE(p.lstat().st_mode) for p in [folder.parent, folder, *folder.iterdir()]}


def _private(folder: Path) -> bool:
    modes = _modes(folder)
    folders = {folder.parent.name, folder.name}
    return all(mode == (0o700 if name in folders else 0o600) for name, mode in modes.items())


def test_the_prompt_cache_is_private_under_umask_022(tiny_gguf, tmp_path):
    home = tmp_path / "home"
    _ok(_cg(tiny_gguf, home, _file(45), *NO_STOPS, umask=0o022))
    folder = _folder(home)
    names = _modes(folder).keys()
    assert ".lock" in names and any(n.endswith(".kv") for n in names) and any(n.endswith(".tokens") for n in names)
    assert _private(folder), _modes(folder)


def test_a_cache_others_can_read_is_tightened_when_cg_opens_it(run):
    text = _file(45)
    run(text)
    folder = _folder(run.home)
    for p in [folder.parent, folder]:
        p.chmod(0o755)
    for p in folder.iterdir():
        p.chmod(0o644)
    again = run(text)
    assert again["timings"]["cached_tokens"] > 0 and again["stderr"] == ""
    assert _private(folder), _modes(folder)


def test_atomic_writes_are_private_unless_a_mode_is_given(tmp_path):
    old = os.umask(0o022)
    try:
        write_atomic(tmp_path / "new.txt", b"user code")
        (tmp_path / "old.txt").write_bytes(b"x")
        (tmp_path / "old.txt").chmod(0o644)
        write_atomic(tmp_path / "old.txt", b"user code")
        staged = stage(tmp_path / "source.py", b"x = 1\n", mode=0o664)  # a user's own file keeps its mode
        staged.commit()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new.txt").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "old.txt").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "source.py").stat().st_mode) == 0o664


# --- 6. entries that are not regular files ----------------------------------------------------

@pytest.mark.parametrize("kind", ["fifo-tokens", "fifo-kv", "link-tokens"])
def test_an_entry_that_is_not_a_regular_file_is_removed_without_blocking(run, tmp_path, kind):
    text = _file(45)
    fresh = run(text, CG_PROMPT_CACHE="0")
    run(text)
    folder = _folder(run.home)
    [kv] = folder.glob("*.kv")
    index = kv.with_suffix(".tokens")
    outside = tmp_path / "outside.tokens"
    if kind == "fifo-tokens":
        os.mkfifo(folder / ("0" * 24 + ".tokens"))
    elif kind == "fifo-kv":
        kv.unlink()
        os.mkfifo(kv)
    else:
        outside.write_bytes(index.read_bytes())
        index.unlink()
        index.symlink_to(outside)
    again = run(text)  # hung for ever on the FIFO before
    assert again["text"] == fresh["text"]
    assert again["stderr"].count("Warning: prompt cache: removed a damaged entry") == 1, again["stderr"]
    assert all(stat.S_ISREG(p.lstat().st_mode) for p in folder.iterdir())
    if kind == "link-tokens":
        assert outside.read_bytes().startswith(b"{")  # what the link pointed to is untouched
    assert run(text)["timings"]["cached_tokens"] > 0


# --- 7. lock files are never followed ---------------------------------------------------------

@pytest.mark.parametrize("kind", ["dangling-link", "fifo"])
def test_a_lock_that_is_a_link_or_a_fifo_is_not_followed_nor_waited_on(run, tmp_path, kind):
    run(_file(45))
    folder = _folder(run.home)
    (tmp_path / "outside").mkdir()
    target = tmp_path / "outside" / "made-by-cg"
    (folder / ".lock").unlink()
    if kind == "fifo":
        os.mkfifo(folder / ".lock")  # opening it to write waited for a reader for ever
    else:
        (folder / ".lock").symlink_to(target)
    other = run("# another file\n" + _file(45), CG_EXACT="1")  # evaluated exactly, saved: takes the lock
    assert not target.exists()
    assert other["stderr"].count("Warning: prompt cache:") == 1 and ".lock" in other["stderr"], other["stderr"]


def test_a_dangling_link_for_the_registry_lock_is_not_followed(tmp_path, monkeypatch):
    monkeypatch.setenv("CG_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    target = tmp_path / "made-by-cg"
    (tmp_path / "home" / "models.json.lock").symlink_to(target)
    with pytest.raises(HomeError, match="cannot lock"):
        store.register(store.ModelRecord(name="x", path=str(tmp_path / "x.gguf")))
    assert not target.exists()


# --- 10. crafted entries whose hash still checks out ------------------------------------------

def _craft(index: Path, change) -> None:
    line, rest = index.read_bytes().split(b"\n", 1)
    header, tokens = json.loads(line), np.frombuffer(rest, dtype="<i4")
    header, tokens = change(header, tokens)
    index.write_bytes(json.dumps(header).encode() + b"\n" + np.asarray(tokens, dtype="<i4").tobytes())


def _longer(n: int | None = None, **fields: int):
    """Tokens appended (n in all, else 100 more) and the header's count raised to match."""
    def change(header, tokens):
        total = n or len(tokens) + 100
        extra = np.resize(tokens[1:], total - len(tokens))
        return {**header, "tokens": total, **fields}, np.concatenate([tokens, extra])

    return change


@pytest.mark.parametrize("change", [
    pytest.param(_longer(6014), id="count-beyond-the-context"),
    pytest.param(_longer(), id="tokens-the-state-does-not-hold"),
    pytest.param(lambda h, t: (h, np.where(np.arange(len(t)) == 5, 10**6, t)), id="id-outside-the-vocabulary"),
    pytest.param(lambda h, t: (h, np.where(np.arange(len(t)) == 5, -1, t)), id="negative-id"),
    pytest.param(lambda h, t: ({**h, "tokens": True}, t[:1]), id="count-true"),
    pytest.param(lambda h, t: ({**h, "kv_bytes": -1}, t), id="negative-size"),
])
def test_a_crafted_entry_is_dropped_with_one_warning(run, change):
    text = _file(45)
    fresh = run(text, CG_PROMPT_CACHE="0")
    run(text)
    folder = _folder(run.home)
    [kv] = folder.glob("*.kv")
    _craft(kv.with_suffix(".tokens"), change)
    again = run(text)  # was: Error: ValueError: could not broadcast ..., exit 1, every time
    assert again["text"] == fresh["text"] and again["timings"]["cached_tokens"] == 0
    assert again["stderr"].count("Warning: prompt cache: removed a damaged entry") == 1, again["stderr"]
    header = json.loads(kv.with_suffix(".tokens").read_bytes().split(b"\n", 1)[0])
    assert header["tokens"] == fresh["prompt_tokens"]  # the crafted one is gone; a good one took its place
    third = run(text)
    assert third["stderr"] == "" and third["timings"]["cached_tokens"] > 0 and third["text"] == fresh["text"]


def test_an_entry_of_a_larger_context_is_skipped_not_dropped(run):
    text = _file(45)
    run(text)
    [kv] = _folder(run.home).glob("*.kv")
    _craft(kv.with_suffix(".tokens"), _longer(3000, ctx=4096))  # what a --ctx 4096 run may save
    again = run(text)
    assert again["stderr"] == "" and again["timings"]["cached_tokens"] == 0 and again["prompt_tokens"] < 2048


_json = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                     max_leaves=8)


@settings(max_examples=300, deadline=None)
@given(fields=st.dictionaries(st.sampled_from(["tokens", "ctx", "kv_bytes", "kv_hash", "format", "model"]), _json))
def test_a_header_is_a_valid_one_or_damaged(fields):
    header = {"format": 3, "model": "key", "tokens": 300, "ctx": 2048, "kv_bytes": 10, "kv_hash": "0" * 40, **fields}
    try:
        got = _header(json.dumps(header).encode(), "key")
    except DamagedEntry:
        return
    assert 1 <= got.tokens <= got.ctx <= 1 << 24 and got.kv_bytes >= 1 and len(got.kv_hash) == 40


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=600))
def test_any_bytes_in_a_tokens_file_are_an_entry_or_removed(tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("pc") / "key"
    folder.mkdir()
    (folder / ("a" * 24 + ".tokens")).write_bytes(data)
    (folder / ("a" * 24 + ".kv")).write_bytes(b"x" * 10)
    warned: list[str] = []
    cache = PromptCache(folder, "key", 2**20, warned.append)
    found = list(cache.entries(2048, 1000))
    assert found or (not (folder / ("a" * 24 + ".tokens")).exists() and len(warned) == 1)
