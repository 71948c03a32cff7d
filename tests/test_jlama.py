"""The Jlama-quantized checkpoint this project started from (Q4 / I8 safetensors) to GGUF: Q4 to
Q4_0 byte for byte as llama.cpp's own quantizer writes it, the vocabulary from tokenizer.json alone,
split files, the old layout, I8, broken files, and `cg download` of a Jlama repo."""

from __future__ import annotations

import ctypes
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cg.cli import main
from cg.models import store
from quantize.convert import convert

from . import jlama_writer
from .corrupt import edit_config, edit_header, two_same_size
from .fakehub import FakeHub, Repo, folder_files
from .helpers import NO_STOPS, run_cg
from .synthetic import write_checkpoint

CODE = ("import os\n\nclass Stack:\n    def push(self, item):\n\tself.items.append(item)  # 123 ünï\n"
        "result = [x * x for x in range(100) if x % 2 == 0]\n<|fim_prefix|> [@BOS@] <unused3>\n")


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> Path:
    """The tiny CodeGemma-layout model in bf16 (as Google ships CodeGemma), with the tokenizer.json
    and tokenizer_config.json that transformers writes from its tokenizer.model."""
    from transformers import AutoTokenizer

    folder = write_checkpoint(tmp_path_factory.mktemp("jlama-src") / "tiny-codegemma", dtype="BF16")
    converted = folder.parent / "hf-tokenizer"
    AutoTokenizer.from_pretrained(str(folder)).save_pretrained(str(converted))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(converted / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def jq4(original, tmp_path_factory) -> Path:
    return jlama_writer.write(original, tmp_path_factory.mktemp("jq4") / "codegemma-tiny-JQ4")


def test_the_writer_is_ggml_q4_0_with_f32_scales():
    """The Java-derived writer against gguf-py's Q4_0 on random bf16 weights."""
    import gguf

    rng = np.random.default_rng(3)
    scaled = rng.standard_normal((64, 256), dtype=np.float32) * np.float32(0.02)
    values = (scaled.view(np.uint32) & 0xFFFF0000).view(np.float32)  # bf16 values
    values[5, :32] = 0  # an all-zero block
    packed, scales = jlama_writer.quantize_q4(values)
    blocks = gguf.quants.quantize(values, gguf.GGMLQuantizationType.Q4_0).reshape(-1, 18)
    assert np.array_equal(blocks[:, 2:], packed.reshape(-1, 16))
    assert np.array_equal(blocks[:, :2].copy().view(np.float16).reshape(-1), scales.reshape(-1).astype(np.float16))
    assert np.array_equal(scales.reshape(-1).astype(np.float16).astype(np.float32), scales.reshape(-1))  # from bf16


def _pure_q4_0(f32: Path, out: Path) -> Path:
    """llama.cpp's own quantizer, every 2-D tensor to Q4_0 (llama-quantize --pure)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
    params.pure = True
    assert llama_cpp.llama_model_quantize(str(f32).encode(), str(out).encode(), ctypes.byref(params)) == 0
    return out


def _tensors(path: Path) -> dict[str, tuple[str, bytes]]:
    import gguf

    return {t.name: (t.tensor_type.name, t.data.tobytes()) for t in gguf.GGUFReader(path).tensors}


def test_q4_to_q4_0_is_llama_cpps_own_quantization_byte_for_byte(original, jq4, tmp_path):
    result = convert(jq4, tmp_path / "jq4-q4_0.gguf")
    assert result.type.value == "q4_0" and not result.requantized
    assert result.rounded_blocks == 0 and result.copied_blocks > 0  # bf16 weights: every scale fits f16
    assert result.note() == f"Note: copied {result.copied_blocks} Jlama Q4 blocks into Q4_0 losslessly."
    reference = _pure_q4_0(convert(original, tmp_path / "f32.gguf", type="f32").path, tmp_path / "ref-q4_0.gguf")
    ours, theirs = _tensors(result.path), _tensors(reference)
    assert ours.keys() == theirs.keys()
    q4 = [name for name, (kind, _) in theirs.items() if kind == "Q4_0"]
    assert len(q4) == 1 + 7 * 2  # token_embd and every projection
    assert all(ours[name] == theirs[name] for name in q4)
    norms = [name for name in theirs if name.endswith("norm.weight")]
    assert norms and all(ours[name] == theirs[name] for name in norms)  # F32, with Gemma's +1
    proc = run_cg("complete", "-m", str(result.path), "-n", "4", *NO_STOPS, "--json", "--prefix", "def f():\n")
    assert proc.returncode == 0 and json.loads(proc.stdout)["completion_tokens"] == 4, proc.stderr


def test_the_vocabulary_from_tokenizer_json_is_the_one_from_tokenizer_model(original, jq4, tmp_path):
    import llama_cpp

    from quantize.vocab import load_vocab

    assert not (jq4 / "tokenizer.model").exists()
    from_model, from_json = load_vocab(original, 640), load_vocab(jq4, 640)
    assert from_json.tokens == from_model.tokens and from_json.scores == from_model.scores
    assert from_json.types == from_model.types and from_json.special == from_model.special
    assert from_json.special["fim_sep"] == 70 and from_json.special["eot"] == 107
    ggufs = [convert(folder, tmp_path / f"{n}.gguf", type="f32").path for n, folder in (("model", original),
                                                                                      ("json", jq4))]
    ids = []
    for path in ggufs:
        llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
        ids.append([llm.tokenize(CODE.encode(), add_bos=False, special=s) for s in (False, True)])
        llm.close()
    assert ids[0] == ids[1]


def test_split_files_with_scales_in_another_chunk(original, jq4, tmp_path):
    split = jlama_writer.write(original, tmp_path / "split", shards=3)
    assert sorted(p.name for p in split.glob("model-*")) == [f"model-0000{i}-of-00003.safetensor" for i in (1, 2, 3)]
    index = json.loads((split / "model.safetensors.index.json").read_text())["weight_map"]
    assert index["model.embed_tokens.weight"] != index["model.embed_tokens.weight.qb"]
    one = convert(jq4, tmp_path / "one.gguf").path
    three = convert(split, tmp_path / "three.gguf").path
    assert _tensors(one) == _tensors(three)


def test_the_old_layout_with_quantized_norms(original, tmp_path):
    import gguf

    old = jlama_writer.write(original, tmp_path / "old", old_layout=True)
    header = json.loads((old / "model.safetensors").read_bytes()[8:8 + 2**16].split(b"}}", 1)[0] + b"}}")
    assert header["model.norm.weight"]["dtype"] == "Q4" and header["model.norm.weight.qb"]["shape"] == [8]
    path = convert(old, tmp_path / "old.gguf").path
    norm = next(t for t in gguf.GGUFReader(path).tensors if t.name == "output_norm.weight")
    packed, scales = jlama_writer.quantize_q4(jlama_writer.load_float_safetensors(original / "model.safetensors")
                                              ["model.norm.weight"])
    assert norm.tensor_type.name == "F32"
    assert np.array_equal(np.asarray(norm.data), jlama_writer.dequantize_q4(packed, scales) + 1)


@pytest.mark.parametrize("block", [32, 256])
def test_an_i8_checkpoint_dequantizes_to_q8_0(original, tmp_path, capsys, block):
    i8 = jlama_writer.write(original, tmp_path / "JQ8", kind="I8", i8_block=block)
    assert main(["quantize", str(i8), "-o", str(tmp_path / "i8.gguf")]) == 0
    err = capsys.readouterr().err
    assert "Jlama I8 weights were dequantized and quantized again to q8_0 (two roundings)" in err
    assert {kind for kind, _ in _tensors(tmp_path / "i8.gguf").values()} == {"Q8_0", "F32"}
    proc = run_cg("complete", "-m", str(tmp_path / "i8.gguf"), "-n", "3", *NO_STOPS, "--prefix", "x = ")
    assert proc.returncode == 0, proc.stderr


def test_other_types_from_q4_say_they_quantize_twice(jq4, tmp_path, capsys):
    assert main(["quantize", str(jq4), "--type", "q8_0", "-o", str(tmp_path / "q8.gguf")]) == 0
    assert "quantized again to q8_0 (two roundings); --type q4_0 copies Jlama Q4 losslessly" in capsys.readouterr().err


def test_f32_from_q4_says_it_is_exact(jq4, tmp_path, capsys):
    assert main(["quantize", str(jq4), "--type", "f32", "-o", str(tmp_path / "f32.gguf")]) == 0
    err = capsys.readouterr().err
    assert "Jlama Q4 weights were dequantized exactly to f32" in err and "two roundings" not in err


@pytest.mark.parametrize("damage, message", [
    ("truncate", "is truncated or not a safetensors file"),
    ("drop-scales", "Q4 tensor model.layers.1.mlp.up_proj.weight has no model.layers.1.mlp.up_proj.weight.qb"),
    ("q4-blocks-of-64", "model.layers.1.mlp.up_proj.weight.qb has shape"),
])
def test_broken_checkpoints_are_input_errors(jq4, tmp_path, capsys, damage, message):
    broken = Path(shutil.copytree(jq4, tmp_path / "broken"))
    data = (broken / "model.safetensors").read_bytes()
    if damage == "truncate":
        (broken / "model.safetensors").write_bytes(data[: len(data) * 2 // 3])
    else:
        (size,) = np.frombuffer(data[:8], "<u8")
        header = json.loads(data[8:8 + int(size)])
        if damage == "drop-scales":
            del header["model.layers.1.mlp.up_proj.weight.qb"]
        else:  # Q4 is blocks of 32: scales per 64 values do not fit it (same file, half the scales read)
            scales = header["model.layers.1.mlp.up_proj.weight.qb"]
            scales["shape"][-1] //= 2
            start = scales["data_offsets"][0]
            scales["data_offsets"][1] = start + (scales["data_offsets"][1] - start) // 2
        raw = json.dumps(header, separators=(",", ":")).encode()
        (broken / "model.safetensors").write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + int(size):])
    out = tmp_path / "out.gguf"
    assert main(["quantize", str(broken), "-o", str(out)]) == 2
    assert message in capsys.readouterr().err.splitlines()[0]
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_cg_download_of_a_jlama_repo(jq4, tmp_path, monkeypatch, capsys):
    files = folder_files(jq4)
    with FakeHub() as hub:
        hub.repos["tjake/codegemma-2b-JQ4"] = Repo(files)
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
        monkeypatch.setenv("CG_HOME", str(tmp_path / "cg"))
        assert main(["download", "tjake/codegemma-2b-JQ4"]) == 0
        out, err = capsys.readouterr()
        assert out == "codegemma-2b-jq4-q4_0\n" and "Jlama Q4 blocks into Q4_0 losslessly" in err
        fetched = {p.split("/resolve/", 1)[1].split("/", 1)[1] for m, p, _ in hub.requests if m == "GET"
                   and "/resolve/" in p}
        assert fetched == {"config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"}
        hub.requests.clear()
        assert main(["download", "tjake/codegemma-2b-JQ4"]) == 0  # installed: nothing fetched again
        assert "already installed" in capsys.readouterr().err and not [r for r in hub.requests if r[0] == "GET"
                                                                      and "/resolve/" in r[1]]
    record = store.get("codegemma-2b-jq4-q4_0")
    assert record.quant == "q4_0" and record.special_ids["fim_sep"] == 70
    assert main(["complete", "-n", "3", *NO_STOPS, "--json", "--prefix", "def f():\n"]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == record.path


def _q4_pair(header):
    return two_same_size(header, "Q4")


def _scales_on_their_tensor(header):
    """A Q4 tensor's W.qb scales pointed into W's own nibbles."""
    name = next(n for n in sorted(header) if header[n]["dtype"] == "Q4")
    scales, start = header[name + ".qb"], header[name]["data_offsets"][0]
    scales["data_offsets"] = [start, start + scales["data_offsets"][1] - scales["data_offsets"][0]]


def _q4_offsets(value):
    def change(header):
        entry = header[next(n for n in sorted(header) if header[n]["dtype"] == "Q4")]
        entry["data_offsets"] = value(entry["data_offsets"])
    return change


def _scales_offsets(value):
    def change(header):
        entry = header[next(n for n in sorted(header) if n.endswith(".qb"))]
        entry["data_offsets"] = value(entry["data_offsets"])
    return change


def _overlap_q4(header):
    a, b = _q4_pair(header)
    header[b]["data_offsets"] = list(header[a]["data_offsets"])


# Jlama's Q4 / I8 tensors and their W.qb scales go through the same header checks as float ones.
@pytest.mark.parametrize("change, words", [
    (_overlap_q4, ["overlap"]),  # exit 0 before: two weights read from one range of nibbles
    (_scales_on_their_tensor, ["overlap"]),
    (_q4_offsets(lambda o: [str(o[0]), str(o[1])]), ["data_offsets"]),
    (_scales_offsets(lambda o: [o[0] - 10**6, o[1] - 10**6]), ["data_offsets"]),  # negative: OSError Errno 22
    (_scales_offsets(lambda o: [float(o[0]), float(o[1])]), ["data_offsets"]),
])
def test_hostile_jlama_headers_are_input_errors(jq4, tmp_path, capsys, change, words):
    broken = Path(shutil.copytree(jq4, tmp_path / "broken"))
    edit_header(broken / "model.safetensors", change)
    out = tmp_path / "out.gguf"
    assert main(["quantize", str(broken), "-o", str(out)]) == 2
    line = capsys.readouterr().err.splitlines()[0]
    assert line.startswith("Error: ") and "model.safetensors" in line and all(w in line for w in words), line
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_jlama_config_claiming_more_layers_is_refused_before_allocating(jq4, tmp_path, capsys):
    broken = Path(shutil.copytree(jq4, tmp_path / "broken"))
    edit_config(broken, num_hidden_layers=10**9)
    assert main(["quantize", str(broken), "-o", str(tmp_path / "out.gguf")]) == 2
    assert "config.json num_hidden_layers is 1000000000" in capsys.readouterr().err.splitlines()[0]


@pytest.mark.parametrize("change, words", [
    (lambda t: t["model"]["vocab"].update({"<pad>": "0"}), ["model.vocab", "<pad>"]),  # ValueError before
    (lambda t: t["model"]["vocab"].update({"<pad>": -1}), ["model.vocab", "<pad>"]),  # wrote token -1 before
    (lambda t: t.update(added_tokens=5), ["added_tokens"]),
    (lambda t: t.update(added_tokens=[{"id": 3}]), ["added_tokens"]),
    (lambda t: t.update(model=[]), ["model"]),
])
def test_a_hostile_tokenizer_json_is_an_input_error(jq4, tmp_path, capsys, change, words):
    broken = Path(shutil.copytree(jq4, tmp_path / "broken"))
    tokenizer = json.loads((broken / "tokenizer.json").read_text())
    change(tokenizer)
    (broken / "tokenizer.json").write_text(json.dumps(tokenizer))
    assert main(["quantize", str(broken), "-o", str(tmp_path / "out.gguf")]) == 2
    line = capsys.readouterr().err.splitlines()[0]
    assert "tokenizer.json" in line and all(w in line for w in words), line
    assert not (tmp_path / "out.gguf").exists()
