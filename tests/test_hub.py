"""`cg download` against a fake hub on 127.0.0.1: real huggingface_hub, real HTTP, real conversion."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cg.cli import main
from cg.models import hub as hub_mod
from cg.models import special_ids, store
from cg.models.gguf_header import GGUFHeader, GGUFHeaderError, check_file
from quantize.llama_quant import quantize_gguf

from .fakehub import FakeHub, Repo, folder_files
from .helpers import NO_STOPS, variant_gguf
from .synthetic import Shape, write_checkpoint

TOKEN = "hf_accepted"
BIG = Shape(hidden=512, ffn=1536)  # one 22 MB safetensors file: bigger than huggingface_hub's 10 MB read chunk


@pytest.fixture(scope="module")
def fakehub(tiny_ckpt, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hub-src")
    extra = {"pytorch_model.bin": b"\0" * 4096, "flax_model.msgpack": b"\0" * 64, "README.md": b"# card\n",
             "sub/model.safetensors": b"not for us"}
    big = write_checkpoint(tmp / "big", BIG)
    sharded = write_checkpoint(tmp / "sharded", shards=2)
    f32 = variant_gguf(tiny_ckpt, tmp / "codegemma-2b-f32.gguf", drop=("fim_sep", "eot"))
    q8 = tmp / "codegemma-2b-Q8_0.gguf"
    quantize_gguf(f32, q8, "q8_0")
    with FakeHub() as hub:
        hub.repos["google/codegemma-2b"] = Repo({**folder_files(tiny_ckpt), **extra}, gated=True,
                                                accepted_tokens={TOKEN})
        hub.repos["google/codegemma-1.1-2b"] = Repo(folder_files(big))
        hub.repos["google/codegemma-7b"] = Repo(folder_files(sharded))
        hub.repos["someone/codegemma-2b-GGUF"] = Repo({f32.name: f32.read_bytes(), q8.name: q8.read_bytes(),
                                                       "README.md": b"# gguf\n"})
        yield hub


@pytest.fixture()
def env(fakehub, tmp_path, monkeypatch):
    """A fresh cg home and hub cache for each test, pointed at the fake hub."""
    monkeypatch.setenv("CG_HOME", str(tmp_path / "cg"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_ENDPOINT", fakehub.url)
    for var in ("HF_TOKEN", "HF_HUB_OFFLINE", "HF_HUB_CACHE", "CG_MODEL"):
        monkeypatch.delenv(var, raising=False)
    fakehub.requests.clear()
    fakehub.cut.clear()
    fakehub.stall.clear()
    return tmp_path


def cg(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def fetched(hub: FakeHub) -> set[str]:
    return {p.split("/resolve/", 1)[1].split("/", 1)[1] for m, p, _ in hub.requests if m == "GET" and "/resolve/" in p}


def test_safetensors_repo_becomes_the_model_cg_complete_uses(env, fakehub, capsys):
    code, out, err = cg(capsys, "download", "codegemma-2b", "--token", TOKEN)
    assert (code, out) == (0, "codegemma-2b-q4_k_m\n"), err
    # Only what conversion reads: no *.bin, *.msgpack, README or files in subfolders.
    assert fetched(fakehub) == {"config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json",
                                "special_tokens_map.json"}
    rec = store.get("codegemma-2b-q4_k_m")
    assert (rec.source, rec.revision, rec.quant) == ("google/codegemma-2b", fakehub.repos["google/codegemma-2b"].sha,
                                                     "q4_k_m")
    assert rec.special_ids["fim_sep"] == 70 and rec.special_ids["eot"] == 107
    # No --model: the downloaded CodeGemma is picked over the bundled model.
    code, out, err = cg(capsys, "complete", "--json", "-n", "4", *NO_STOPS, "--prefix", "def f():\n", "--suffix", "")
    assert code == 0, err
    result = json.loads(out)
    assert result["model"] == store.get("codegemma-2b-q4_k_m").path
    assert result["fim"] and result["completion_tokens"] == 4
    code, out, _ = cg(capsys, "models", "--json")
    [row, bundled] = json.loads(out)  # the bundled model is listed too, not the default any more
    assert row["default"] and row["source"] == "google/codegemma-2b" and row["size"] > 0
    assert bundled["name"] == store.BUNDLED_NAME and not bundled["default"]
    # A second run finds it installed and downloads nothing.
    fakehub.requests.clear()
    code, out, err = cg(capsys, "download", "codegemma-2b", "--token", TOKEN)
    assert (code, out) == (0, "codegemma-2b-q4_k_m\n") and "already installed" in err
    assert fetched(fakehub) == set()


def test_token_from_environment_and_keep_source(env, fakehub, capsys, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    code, out, err = cg(capsys, "download", "--quant", "q8_0", "--keep-source")
    assert (code, out) == (0, "codegemma-2b-q8_0\n"), err
    rec = store.get("codegemma-2b-q8_0")
    source = Path(rec.source_dir)
    shipped = fakehub.repos["google/codegemma-2b"].files["model.safetensors"]
    assert (source / "model.safetensors").stat().st_size == len(shipped)
    assert cg(capsys, "models", "rm", "codegemma-2b-q8_0")[0] == 0
    assert not source.exists() and not Path(rec.path).exists()


@pytest.mark.parametrize("token, needle", [(None, "pass --token"), ("hf_other", "has not accepted its license")])
def test_gated_repo_without_access(env, fakehub, capsys, token, needle):
    code, out, err = cg(capsys, "download", "codegemma-2b", *(["--token", token] if token else []))
    lines = err.splitlines()
    assert code == 3 and out == "" and lines[0].startswith("Error: google/codegemma-2b is gated")
    assert needle in err and f"{fakehub.url}/google/codegemma-2b" in err  # the license page
    assert store.list_models() == []


@pytest.mark.parametrize("args, needle", [(["nobody/nothing"], "repository nobody/nothing not found"),
                                          (["codegemma-1.1-2b", "--revision", "v9"], "revision 'v9' not found"),
                                          (["not a repo"], "unknown model")])
def test_missing_repo_or_revision(env, capsys, args, needle):
    code, _out, err = cg(capsys, "download", *args)
    assert code in (2, 4) and needle in err.splitlines()[0] and store.list_models() == []
    assert code == (2 if args == ["not a repo"] else 4)


def test_gguf_repo_fetches_only_the_matching_quant_and_records_stop_ids(env, fakehub, capsys):
    code, out, err = cg(capsys, "download", "someone/codegemma-2b-GGUF", "--quant", "q8_0")
    assert (code, out) == (0, "codegemma-2b-q8_0\n"), err
    assert fetched(fakehub) == {"codegemma-2b-Q8_0.gguf"}
    # The file lacks fim_sep and eot ids: said on stderr, recorded in the store.
    assert "lacks tokenizer.ggml.fim_sep_token_id, tokenizer.ggml.eot_token_id" in err
    rec = store.get("codegemma-2b-q8_0")
    assert rec.special_ids["fim_sep"] == 70 and rec.special_ids["eot"] == 107
    # The store holds a hard link to the hub cache's blob, not a second copy.
    blobs = list((env / "hf" / "hub").rglob("blobs/*"))
    assert any(os.path.samefile(b, rec.path) for b in blobs)
    code, out, err = cg(capsys, "complete", "--model", "codegemma-2b-q8_0", "-n", "3", *NO_STOPS, "--json",
                        "--prefix", "x = ", "--suffix", "\n")
    assert code == 0 and json.loads(out)["completion_tokens"] == 3, err


def test_gguf_repo_without_the_quant_lists_what_it_has(env, fakehub, capsys):
    code, _out, err = cg(capsys, "download", "someone/codegemma-2b-GGUF", "--quant", "q5_k_m")
    assert code == 4 and err.splitlines()[0] == "Error: no q5_k_m GGUF in this repository; it has: f32, q8_0"
    assert fetched(fakehub) == set()


def test_dropped_connection_resumes_with_a_range_request(env, fakehub, capsys):
    fakehub.cut["model.safetensors"] = 11_000_000
    code, out, err = cg(capsys, "download", "codegemma-1.1-2b", "--quant", "f16")
    assert (code, out) == (0, "codegemma-1.1-2b-f16\n"), err
    # huggingface_hub keeps whole 10 MiB chunks: it asks for the rest from the last one it wrote.
    first, resume = fakehub.downloads("model.safetensors")
    assert first is None and resume == f"bytes={10 * 2**20}-"
    blob = next(p for p in (env / "hf" / "hub").rglob("snapshots/*/model.safetensors"))
    assert blob.read_bytes() == fakehub.repos["google/codegemma-1.1-2b"].files["model.safetensors"]


def test_interrupted_download_registers_nothing_and_keeps_finished_files(env, fakehub):
    fakehub.stall["model-00002-of-00002.safetensors"] = 1000
    cmd = [sys.executable, "-m", "cg", "download", "codegemma-7b", "--quant", "f16"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        assert fakehub.stalled.wait(60)
        proc.send_signal(signal.SIGINT)  # Ctrl-C in the middle of the second shard
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        fakehub.release.set()
    assert proc.returncode == 130 and err.splitlines()[-1] == "Error: interrupted" and out == ""
    assert store.list_models() == [] and not list((env / "cg").rglob("*.gguf"))
    fakehub.stall.clear()
    fakehub.requests.clear()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy(), timeout=120)
    assert proc.returncode == 0 and proc.stdout == "codegemma-7b-f16\n", proc.stderr
    # Files that had finished are not fetched again; the interrupted shard is.
    again = fetched(fakehub)
    assert "model-00002-of-00002.safetensors" in again
    assert not again & {"config.json", "model-00001-of-00002.safetensors"}


def test_offline_mode_and_unreachable_hub_use_the_cache(env, fakehub, capsys, monkeypatch):
    assert cg(capsys, "download", "someone/codegemma-2b-GGUF", "--quant", "q8_0")[0] == 0
    assert cg(capsys, "models", "rm", "codegemma-2b-q8_0")[0] == 0
    fakehub.requests.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out, err = cg(capsys, "download", "someone/codegemma-2b-GGUF", "--quant", "q8_0")
    assert (code, out) == (0, "codegemma-2b-q8_0\n"), err
    assert fakehub.requests == []
    assert store.get("codegemma-2b-q8_0").revision == fakehub.repos["someone/codegemma-2b-GGUF"].sha
    # Not cached: a clear error, not a traceback.
    code, out, err = cg(capsys, "download", "codegemma-2b")
    assert code == 5 and "not in the hub cache" in err.splitlines()[0]
    # Hub unreachable (nothing listens there): the cache is used, with a note.
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    code, out, err = cg(capsys, "download", "someone/codegemma-2b-GGUF", "--quant", "q8_0", "--force")
    assert code == 0 and "the hub is unreachable" in err, err
    code, out, err = cg(capsys, "download", "codegemma-7b")
    assert code == 5 and err.startswith("Error: cannot reach the hub at http://127.0.0.1:9")


def test_not_enough_disk_space_stops_before_downloading(env, fakehub, capsys, monkeypatch):
    # The one stand-in here: the free space the OS reports.
    monkeypatch.setattr(hub_mod.shutil, "disk_usage", lambda _path: SimpleNamespace(total=10**9, used=0, free=1000))
    code, _out, err = cg(capsys, "download", "codegemma-1.1-2b")
    assert code == 1 and err.startswith("Error: not enough disk space") and fetched(fakehub) == set()


@pytest.mark.parametrize("name, quant", [("codegemma-2b-Q4_K_M.gguf", "q4_k_m"), ("model.q8_0.gguf", "q8_0"),
                                         ("codegemma-7b-it-f16.gguf", "f16"), ("x-Q4_K_S.gguf", "q4_k_s"),
                                         ("codegemma-2b.gguf", None)])
def test_quant_from_file_name(name, quant):
    assert hub_mod.quant_of(name) == quant


def test_choose_prefers_a_matching_gguf_then_the_checkpoint():
    files = {"config.json": 1, "model.safetensors": 9, "m-Q8_0.gguf": 5, "pytorch_model.bin": 9, "tokenizer.model": 1}
    assert hub_mod.choose(files, "q8_0").files == ("m-Q8_0.gguf",)
    assert hub_mod.choose(files, "q4_k_m").files == ("config.json", "model.safetensors", "tokenizer.model")


# ---------------------------------------------------------------- crafted GGUFs in a repository


def nested_gguf(depth: int) -> bytes:
    """A GGUF whose one key is an array of an array of ... (depth levels) of no bytes."""
    key = struct.pack("<Q", 1) + b"x" + struct.pack("<I", 9)
    return (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + key
            + struct.pack("<IQ", 9, 1) * (depth - 1) + struct.pack("<IQ", 0, 0))


def patched(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    return data[:offset] + struct.pack(fmt, value) + data[offset + struct.calcsize(fmt):]


CRAFTED = {
    "nested": (lambda good: nested_gguf(50_000), "arrays nested more than"),
    "array-of-arrays": (lambda good: nested_gguf(2), "key 'x' is an array of arrays"),
    "not-gguf": (lambda good: b"<html>not found</html>", "not a GGUF file"),
    "empty": (lambda good: b"", "the file is empty"),
    "cut-in-data": (lambda good: good[:len(good) - 4096], "lies past the end of the file"),
    "cut-in-header": (lambda good: good[:2048], "truncated"),
    "kv-count": (lambda good: patched(good, 16, "<Q", 2**40), "announces 1099511627776 keys"),
    "tensor-count": (lambda good: patched(good, 8, "<Q", 2**40), "1099511627776 tensors"),
    "string-length": (lambda good: patched(good, 24, "<Q", 2**60), "truncated"),
    "version": (lambda good: patched(good, 4, "<I", 99), "GGUF version 99 is not supported"),
}


@pytest.fixture(scope="module")
def good_gguf(fakehub) -> bytes:
    return fakehub.repos["someone/codegemma-2b-GGUF"].files["codegemma-2b-Q8_0.gguf"]


@pytest.mark.parametrize("case", list(CRAFTED))
def test_a_broken_repo_gguf_is_refused_and_leaves_nothing(env, fakehub, good_gguf, capsys, case):
    craft, reason = CRAFTED[case]
    repo = f"crafted/{case}-GGUF"
    fakehub.repos[repo] = Repo({f"{case}-Q8_0.gguf": craft(good_gguf)})
    code, out, err = cg(capsys, "download", repo, "--quant", "q8_0")
    first = err.splitlines()[0]
    assert code == 2 and out == "", err
    assert first.startswith(f"Error: {case}-Q8_0.gguf from {repo} is not a GGUF cg can load") and reason in first
    assert "Recursion" not in err and "Hint:" in err
    assert store.list_models() == [] and not list((env / "cg").rglob("*.gguf"))


def test_a_failed_registration_leaves_no_model_file(env, fakehub, capsys, monkeypatch):
    def full(_record):  # fault injection: the registry cannot be written (a full disk)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store, "register", full)
    code, _out, err = cg(capsys, "download", "someone/codegemma-2b-GGUF", "--quant", "q8_0")
    assert code == 1 and "No space left" in err
    assert not list((env / "cg").rglob("*.gguf"))


def test_the_check_passes_the_files_cg_writes_and_llama_cpps(tiny_gguf, bundled_gguf):
    for path in (tiny_gguf, bundled_gguf):  # the bundled 270M comes from llama.cpp's converter
        check_file(path)


def test_deep_nesting_is_refused_by_every_reader(tmp_path):
    path = tmp_path / "nested.gguf"
    path.write_bytes(nested_gguf(50_000))
    header = GGUFHeader(path.read_bytes())
    for read in (header.scalars, lambda: header.find_pieces(["<eos>"])):
        with pytest.raises(GGUFHeaderError, match="nested more than"):
            read()
    # What engines use: a header cg cannot read gives the ids the store recorded.
    ids, from_meta = special_ids.of_gguf(path, recorded={"eos": 1})
    assert ids.eos == 1 and from_meta == set()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_any_damage_to_a_gguf_is_a_header_error_or_a_pass(good_gguf, data):
    """Bytes overwritten anywhere in the header, or the file cut anywhere: the check ends with
    GGUFHeaderError or passes, never another exception."""
    raw = bytearray(good_gguf)
    header_end = min(len(raw), 64 * 1024)
    if data.draw(st.booleans()):
        raw = raw[:data.draw(st.integers(0, len(raw)))]
    else:
        at = data.draw(st.integers(0, header_end - 8))
        raw[at:at + 8] = data.draw(st.binary(min_size=8, max_size=8))
    try:
        GGUFHeader(bytes(raw)).check()
    except GGUFHeaderError:
        pass
