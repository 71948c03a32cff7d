"""`cg quantize` on hostile checkpoints: every bad config.json field, safetensors header entry,
index or tokenizer file is one `Error:` line naming the file and the field, exit 2, before any
output exists (nothing left behind), and before anything sized by the config is allocated."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cg.cli import main
from cg.errors import ConversionError
from quantize.convert import convert

from .corrupt import edit_config, edit_header, read_header, two_same_size, write_raw
from .helpers import run_cg

WEIGHTS = "model.safetensors"


@pytest.fixture()
def bad(tiny_ckpt, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_ckpt, tmp_path / "bad"))


def refused(folder: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """Run `cg quantize`; assert exit 2, one Error line and no output; return that line."""
    out = folder.parent / "out.gguf"
    assert main(["quantize", str(folder), "--type", "f32", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert lines[0].startswith("Error: ") and "Traceback" not in err, err
    assert all(line.startswith("Hint: ") for line in lines[1:]), err
    left = [p.name for p in folder.parent.iterdir() if p.suffix == ".gguf" or p.name.startswith(".")]
    assert left == [], left  # no GGUF, no temp file
    return lines[0]


# (config.json key, value): each is refused naming the key. The tiny checkpoint has 2 layers,
# hidden 256, 4 heads of 64, 1 KV head, ffn 512, vocab 640.
BAD_CONFIG = [
    ("num_hidden_layers", 10**9),  # grew memory without bound (issue 28 item 9)
    ("num_hidden_layers", 3),  # more than the tensors hold
    ("num_hidden_layers", 1),  # fewer
    ("num_hidden_layers", "2"),  # TypeError
    ("num_hidden_layers", 2.0),
    ("num_hidden_layers", -2),
    ("num_attention_heads", 0),  # ZeroDivisionError
    ("num_attention_heads", 5),  # 5 heads of 64 do not fit q_proj's 256 rows
    ("num_key_value_heads", 0),
    ("num_key_value_heads", 3),  # 4 heads cannot share 3 KV heads
    ("head_dim", 0),
    ("hidden_size", True),
    ("hidden_size", [256]),
    ("vocab_size", 1e30),
    ("vocab_size", 10**12),  # a list of 10**12 padding tokens before
    ("vocab_size", 700),  # the embedding holds 640 rows
    ("intermediate_size", 2**64),
    ("max_position_embeddings", 2**40),  # GGUF holds it in 32 bits
    ("max_position_embeddings", 0),
    ("rms_norm_eps", math.nan),
    ("rms_norm_eps", math.inf),
    ("rms_norm_eps", -1e-6),
    ("rms_norm_eps", 0),
    ("rms_norm_eps", "1e-6"),
    ("rms_norm_eps", 1e300),  # no float32 holds it
    ("rope_theta", math.nan),
    ("rope_theta", False),
]


@pytest.mark.parametrize("key,value", BAD_CONFIG, ids=[f"{k}={v!r}"[:40] for k, v in BAD_CONFIG])
def test_bad_config_fields(bad, capsys, key, value):
    edit_config(bad, **{key: value})
    line = refused(bad, capsys)
    assert "config.json" in line and key in line, line


@pytest.mark.parametrize("value", [5, {"GemmaForCausalLM": 1}, [7], []])
def test_bad_architectures(bad, capsys, value):
    edit_config(bad, architectures=value, model_type=...)
    line = refused(bad, capsys)
    assert "config.json" in line and "architectures" in line, line


def test_a_bad_name_or_path(bad, capsys):
    edit_config(bad, _name_or_path={"not": "a name"})
    line = refused(bad, capsys)
    assert "config.json" in line and "_name_or_path" in line, line


def test_deeply_nested_config(bad, capsys):
    (bad / "config.json").write_text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert "config.json" in refused(bad, capsys)


@pytest.mark.parametrize("file", ["config.json", "tokenizer_config.json"])
def test_a_huge_json_file_is_not_read(bad, capsys, file):
    with open(bad / file, "r+b") as f:
        f.truncate(2**31)  # sparse: 2 GiB of NULs that read_text() would hold twice over
    line = refused(bad, capsys)
    assert file in line and "MiB at most" in line, line


@pytest.fixture(scope="module")
def scratch(tiny_ckpt, tmp_path_factory) -> Path:
    """One copy whose config.json each generated example rewrites (nothing else is written)."""
    return Path(shutil.copytree(tiny_ckpt, tmp_path_factory.mktemp("hostile") / "ckpt"))


_INT_KEYS = ["num_hidden_layers", "hidden_size", "intermediate_size", "vocab_size", "num_attention_heads",
             "num_key_value_heads", "head_dim", "max_position_embeddings"]
_FLOAT_KEYS = ["rms_norm_eps", "rope_theta"]
_NOT_A_NUMBER = (st.booleans() | st.text(max_size=8) | st.lists(st.integers(), max_size=2)
                 | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
_BAD_INT = (_NOT_A_NUMBER | st.integers(max_value=0) | st.integers(min_value=2**31)
            | st.floats(allow_nan=True, allow_infinity=True))
_BAD_FLOAT = (_NOT_A_NUMBER | st.floats(max_value=0) | st.sampled_from([math.nan, math.inf, -math.inf, 1e39, 1e-39])
              | st.integers(max_value=0))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=st.one_of(st.tuples(st.sampled_from(_INT_KEYS), _BAD_INT),
                      st.tuples(st.sampled_from(_FLOAT_KEYS), _BAD_FLOAT)))
def test_any_bad_number_in_config_is_refused_naming_its_key(scratch, tmp_path, case):
    original = (scratch / "config.json").read_text()
    key, value = case
    try:
        edit_config(scratch, **{key: value})
        out = tmp_path / "out.gguf"
        with pytest.raises(ConversionError) as info:
            convert(scratch, out, type="f32")
        assert key in info.value.message and "\n" not in info.value.message, info.value.message
        assert not out.exists()
    finally:
        (scratch / "config.json").write_text(original)


def _first(header):
    return next(n for n in sorted(header) if n != "__metadata__")


def _offsets(value):
    def change(header):
        header[_first(header)]["data_offsets"] = value(header[_first(header)]["data_offsets"])
    return change


def _shift(by):
    return _offsets(lambda o: [o[0] + by, o[1] + by])


def _shape(value):
    def change(header):
        header[_first(header)]["shape"] = value(header[_first(header)]["shape"])
    return change


def _overlap(header):
    a, b = two_same_size(header)
    header[b]["data_offsets"] = list(header[a]["data_offsets"])


def _half_overlap(header):
    a, b = two_same_size(header)
    start, end = header[a]["data_offsets"]
    header[b]["data_offsets"] = [start + (end - start) // 2, end + (end - start) // 2]


def _past_the_end(header):
    last = max((n for n in header if n != "__metadata__"), key=lambda n: header[n]["data_offsets"][1])
    header[last]["data_offsets"] = [o + 4 for o in header[last]["data_offsets"]]


def _dtype(header):
    header[_first(header)]["dtype"] = ["F32"]


# (change to model.safetensors' header, words the Error line holds besides the file's name)
BAD_HEADERS = {
    "string offsets": (_offsets(lambda o: [str(o[0]), str(o[1])]), ["data_offsets"]),  # TypeError
    "float offsets": (_offsets(lambda o: [float(o[0]), float(o[1])]), ["data_offsets"]),  # TypeError in seek
    "bool offsets": (_offsets(lambda o: [False, True]), ["data_offsets"]),
    "negative offsets": (_shift(-4), ["data_offsets"]),  # OSError: [Errno 22] in seek
    "reversed offsets": (_offsets(lambda o: [o[1], o[0]]), ["data_offsets"]),
    "three offsets": (_offsets(lambda o: [*o, o[1]]), ["data_offsets"]),
    "overlapping tensors": (_overlap, ["data_offsets", "overlap"]),  # accepted, exit 0
    "half overlapping": (_half_overlap, ["data_offsets", "overlap"]),
    "past the end": (_past_the_end, ["truncated", "data_offsets"]),
    "string shape": (_shape(lambda s: [str(d) for d in s]), ["shape"]),
    "float shape": (_shape(lambda s: [d + 0.5 for d in s]), ["shape"]),
    "negative shape": (_shape(lambda s: [-d for d in s]), ["shape"]),
    "list dtype": (_dtype, ["dtype"]),
}


@pytest.mark.parametrize("name", list(BAD_HEADERS))
def test_bad_safetensors_headers(bad, capsys, name):
    change, words = BAD_HEADERS[name]
    edit_header(bad / WEIGHTS, change)
    line = refused(bad, capsys)
    assert WEIGHTS in line and all(w in line for w in words), line


def test_a_duplicate_tensor_in_a_header(bad, capsys):
    header, body = read_header(bad / WEIGHTS)
    name = _first(header)
    raw = json.dumps(header)[:-1] + f", {json.dumps(name)}: {json.dumps(header[name])}}}"
    write_raw(bad / WEIGHTS, raw.encode(), body)
    line = refused(bad, capsys)
    assert WEIGHTS in line and name in line and "twice" in line, line


def test_a_tensor_in_two_shards(bad, capsys):
    shutil.copy(bad / WEIGHTS, bad / "model-extra.safetensors")
    line = refused(bad, capsys)
    assert "model-extra.safetensors" in line and WEIGHTS in line, line


def test_a_deeply_nested_header(bad, capsys):
    _header, body = read_header(bad / WEIGHTS)
    write_raw(bad / WEIGHTS, b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", body)
    assert WEIGHTS in refused(bad, capsys)


def test_a_control_character_in_a_tensor_name_stays_on_one_line(bad, capsys):
    edit_header(bad / WEIGHTS, lambda h: h.update({"evil\nError: fake": h.pop(_first(h))}))
    line = refused(bad, capsys)
    assert "evil\\nError: fake" in line, line


def test_a_huge_number_in_a_tensor_name_is_no_crash(bad, capsys):
    edit_header(bad / WEIGHTS, lambda h: h.update({"model.layers." + "9" * 5000 + ".x": h.pop(_first(h))}))
    refused(bad, capsys)


@pytest.mark.parametrize("weight_map, words", [
    (["model.safetensors"], ["weight_map"]),  # AttributeError before
    ({"model.embed_tokens.weight": 5}, ["weight_map"]),  # TypeError before
    ({"model.embed_tokens.weight": "../outside.safetensors"}, ["weight_map", "outside.safetensors"]),
])
def test_bad_index_files(bad, capsys, weight_map, words):
    shutil.copy(bad / WEIGHTS, bad.parent / "outside.safetensors")  # read before: a file outside the folder
    (bad / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    line = refused(bad, capsys)
    (bad.parent / "outside.safetensors").unlink()
    assert "model.safetensors.index.json" in line and all(w in line for w in words), line


@pytest.mark.parametrize("content", [b"", b"garbage, not a sentencepiece model" * 10])
def test_bad_tokenizer_model(bad, capsys, content):
    (bad / "tokenizer.model").write_bytes(content)  # RuntimeError before
    assert "tokenizer.model" in refused(bad, capsys)


@pytest.mark.parametrize("file, data, words", [
    ("tokenizer_config.json", {"added_tokens_decoder": {"x": {"content": "a"}}}, ["added_tokens_decoder"]),
    ("tokenizer_config.json", {"added_tokens_decoder": {"5": "a"}}, ["added_tokens_decoder"]),
    ("tokenizer_config.json", {"added_tokens_decoder": {"5": {"content": 7}}}, ["added_tokens_decoder"]),
    ("tokenizer_config.json", {"add_bos_token": "false"}, ["add_bos_token"]),
    ("added_tokens.json", {"<x>": "7"}, ["<x>"]),
    ("added_tokens.json", {"<x>": -1}, ["<x>"]),
])
def test_bad_tokenizer_configs(bad, capsys, file, data, words):
    (bad / file).write_text(json.dumps(data))
    line = refused(bad, capsys)
    assert file in line and all(w in line for w in words), line


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_for_weights_is_refused_not_read(tiny_ckpt, tmp_path):
    bad = Path(shutil.copytree(tiny_ckpt, tmp_path / "bad"))
    (bad / WEIGHTS).unlink()
    os.mkfifo(bad / WEIGHTS)
    proc = run_cg("quantize", str(bad), "--type", "f32", "-o", str(tmp_path / "out.gguf"), timeout=120)  # hang guard
    assert proc.returncode == 2 and proc.stderr.startswith("Error: ") and WEIGHTS in proc.stderr.splitlines()[0]
    assert not (tmp_path / "out.gguf").exists()


@pytest.mark.parametrize("layers", [10**9, "2"])
def test_the_cg_process_reports_a_bad_layer_count(tiny_ckpt, tmp_path, layers):
    """Issue 28 item 9 as reported: `cg quantize` with 10**9 layers grew to 3.76 GB, then MemoryError."""
    bad = Path(shutil.copytree(tiny_ckpt, tmp_path / "bad"))
    edit_config(bad, num_hidden_layers=layers)
    proc = run_cg("quantize", str(bad), "--type", "q8_0", "-o", str(tmp_path / "out.gguf"), timeout=300)
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    error, hint = proc.stderr.splitlines()
    assert error.startswith("Error: config.json num_hidden_layers is ") and hint.startswith("Hint: "), proc.stderr
    assert not (tmp_path / "out.gguf").exists()
