"""Conversion checked against an independent numpy forward pass, metadata, tokenizer, errors, safety."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from cg.errors import ConversionError, OutputExistsError
from quantize.convert import convert

from . import gemma_reference as ref
from .helpers import PROMPT_TEXT, llama_logits
from .synthetic import Shape, write_checkpoint


def greedy(path, tokens, n=8):
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, verbose=False, n_threads=2)
    out = []
    for tok in llm.generate(tokens, temp=0.0, repeat_penalty=1.0):
        out.append(tok)
        if len(out) == n:
            break
    llm.close()
    return out


@pytest.fixture(scope="module")
def prompt(tiny_ckpt):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tiny_ckpt / "tokenizer.model"))
    return [2, *sp.encode(PROMPT_TEXT)]


@pytest.fixture(scope="module")
def reference_logits(tiny_ckpt, prompt):
    config, weights = ref.load_weights(tiny_ckpt)
    return ref.forward(config, weights, prompt)


def test_f32_gguf_matches_numpy_reference(tiny_gguf, prompt, reference_logits):
    got = llama_logits(tiny_gguf, prompt)
    scale = np.abs(reference_logits).max()
    err = np.abs(got - reference_logits).max() / scale
    assert err < 1e-3, err
    assert (got.argmax(-1) == reference_logits.argmax(-1)).all()


@pytest.fixture(scope="module")
def quantized(tiny_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("quant")
    return {t: convert(tiny_ckpt, out / f"tiny-{t}.gguf", type=t).path for t in ("q8_0", "q4_k_m")}


@pytest.mark.parametrize("qtype,max_err", [("q8_0", 0.06), ("q4_k_m", 0.25)])
def test_quantized_models_agree(quantized, tiny_gguf, prompt, reference_logits, qtype, max_err):
    got = llama_logits(quantized[qtype], prompt)
    # Error relative to the spread of the reference logits (measured: q8_0 0.037, q4_k_m 0.17).
    err = np.abs(got - reference_logits).max() / reference_logits.std()
    assert err < max_err, err
    assert greedy(quantized[qtype], prompt) == greedy(tiny_gguf, prompt)


def test_quantized_tensor_types(quantized):
    import gguf

    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(quantized["q8_0"]).tensors}
    assert types["blk.0.attn_q.weight"] == "Q8_0" and types["blk.0.attn_norm.weight"] == "F32"
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(quantized["q4_k_m"]).tensors}
    assert {"Q4_K", "Q6_K"} >= {types["blk.0.attn_q.weight"], types["blk.0.ffn_down.weight"]}


def field(reader, key):
    f = reader.fields[key]
    if f.types[0].name == "STRING":
        return bytes(f.parts[-1]).decode()
    if f.types[0].name == "ARRAY":
        return [f.parts[i] for i in f.data]
    return f.parts[-1][0].item()


def test_metadata_round_trip(tiny_gguf, tiny_ckpt):
    import gguf

    r = gguf.GGUFReader(tiny_gguf)
    config = json.loads((tiny_ckpt / "config.json").read_text())
    expected = {
        "general.architecture": "gemma", "general.file_type": 0,
        "gemma.context_length": 8192, "gemma.embedding_length": 256, "gemma.block_count": 2,
        "gemma.feed_forward_length": 512, "gemma.attention.head_count": 4, "gemma.attention.head_count_kv": 1,
        "gemma.attention.key_length": 64, "gemma.attention.value_length": 64,
        "tokenizer.ggml.model": "llama", "tokenizer.ggml.bos_token_id": 2, "tokenizer.ggml.eos_token_id": 1,
        "tokenizer.ggml.unknown_token_id": 3, "tokenizer.ggml.padding_token_id": 0,
        "tokenizer.ggml.fim_pre_token_id": 67, "tokenizer.ggml.fim_suf_token_id": 69,
        "tokenizer.ggml.fim_mid_token_id": 68, "tokenizer.ggml.fim_sep_token_id": 70,
        "tokenizer.ggml.eot_token_id": 107, "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_space_prefix": False,
    }
    assert {k: field(r, k) for k in expected} == expected
    assert abs(field(r, "gemma.attention.layer_norm_rms_epsilon") - 1e-6) < 1e-12
    tokens = r.fields["tokenizer.ggml.tokens"]
    assert len(tokens.data) == config["vocab_size"]
    types = [int(r.fields["tokenizer.ggml.token_type"].parts[i][0]) for i in r.fields["tokenizer.ggml.token_type"].data]
    assert all(types[i] == 3 for i in (0, 1, 2, 67, 68, 69, 70, 106, 107))  # CONTROL
    names = {t.name for t in r.tensors}
    assert "output.weight" not in names and "token_embd.weight" in names and len(names) == 2 + 9 * 2


def test_norms_get_plus_one(tiny_gguf, tiny_ckpt):
    import gguf
    from safetensors.numpy import load_file

    hf = load_file(str(tiny_ckpt / "model.safetensors"))
    tensors = {t.name: t for t in gguf.GGUFReader(tiny_gguf).tensors}
    np.testing.assert_array_equal(np.asarray(tensors["blk.1.ffn_norm.weight"].data),
                                  hf["model.layers.1.post_attention_layernorm.weight"] + 1)
    np.testing.assert_array_equal(np.asarray(tensors["blk.0.attn_k.weight"].data),
                                  hf["model.layers.0.self_attn.k_proj.weight"])


def test_gguf_tokenizer_matches_sentencepiece(tiny_gguf, tiny_ckpt):
    import llama_cpp
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tiny_ckpt / "tokenizer.model"))
    llm = llama_cpp.Llama(model_path=str(tiny_gguf), vocab_only=True, verbose=False)
    code = ("import os\n\nclass Stack:\n    def push(self, item):\n\tself.items.append(item)  # 123 ünï\n"
            "result = [x * x for x in range(100) if x % 2 == 0]\n")
    assert llm.tokenize(code.encode(), add_bos=False, special=False) == sp.encode(code)


def test_bf16_sharded_checkpoint(tmp_path, prompt):
    src = write_checkpoint(tmp_path / "bf16", Shape(hidden=256, layers=2), dtype="BF16", shards=3, seed=0)
    out = convert(src, tmp_path / "bf16.gguf", type="f32").path
    import gguf

    r = gguf.GGUFReader(out)
    emb = next(t for t in r.tensors if t.name == "token_embd.weight")
    # bf16 -> f32 is exact: every value has a zero low half.
    assert (np.asarray(emb.data).view(np.uint32) & 0xFFFF == 0).all()
    assert len(r.tensors) == 2 + 9 * 2


def test_f16_and_bf16_outputs_load(tiny_ckpt, tmp_path, prompt):
    import gguf

    for t, name in (("f16", "F16"), ("bf16", "BF16")):
        out = convert(tiny_ckpt, tmp_path / f"m-{t}.gguf", type=t).path
        types = {x.name: x.tensor_type.name for x in gguf.GGUFReader(out).tensors}
        assert types["blk.0.ffn_up.weight"] == name and types["output_norm.weight"] == "F32"
        assert len(greedy(out, prompt, 2)) == 2


def test_errors_leave_no_output(tiny_ckpt, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_ckpt, broken)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConversionError, match="truncated"):
        convert(broken, tmp_path / "out.gguf", type="q8_0")
    assert list(tmp_path.glob("*.gguf")) == [] and list(tmp_path.glob(".*tmp")) == []


@pytest.mark.parametrize("change,match", [
    (lambda d: (d / "config.json").unlink(), "config.json is missing"),
    (lambda d: (d / "tokenizer.model").unlink(), "tokenizer.model is missing"),
    (lambda d: (d / "model.safetensors").unlink(), "no \\*.safetensors"),
    (lambda d: _edit_config(d, architectures=["LlamaForCausalLM"]), "unsupported architecture 'LlamaForCausalLM'"),
    (lambda d: _edit_config(d, intermediate_size=1024), "has shape"),
])
def test_bad_checkpoints(tiny_ckpt, tmp_path, change, match):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_ckpt, bad)
    change(bad)
    with pytest.raises(ConversionError, match=match):
        convert(bad, tmp_path / "out.gguf", type="f32")
    assert not (tmp_path / "out.gguf").exists()


def _edit_config(folder, **changes):
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def test_refuses_to_overwrite_without_force(tiny_ckpt, tmp_path):
    out = tmp_path / "m.gguf"
    out.write_bytes(b"keep me")
    with pytest.raises(OutputExistsError):
        convert(tiny_ckpt, out, type="f32")
    assert out.read_bytes() == b"keep me"
    convert(tiny_ckpt, out, type="f32", force=True)
    assert out.read_bytes()[:4] == b"GGUF"


def test_cli_quantize_registers_in_store(tiny_ckpt, capsys):
    from cg.cli import main
    from cg.models import store

    assert main(["quantize", str(tiny_ckpt), "--type", "q8_0", "--name", "codegemma-tiny-q8_0"]) == 0
    out, _err = capsys.readouterr()
    record = store.get("codegemma-tiny-q8_0")
    assert out.strip() == record.path and record.quant == "q8_0" and record.special_ids["fim_sep"] == 70
    assert main(["quantize", str(tiny_ckpt), "--type", "q8_0", "--name", "codegemma-tiny-q8_0"]) == 2
    assert capsys.readouterr().err.startswith("Error: ")
    assert main(["models", "rm", "codegemma-tiny-q8_0"]) == 0
    assert store.get("codegemma-tiny-q8_0") is None


def test_the_gguf_writer_attribute_convert_streams_through(tmp_path):
    """convert.py writes tensor data itself through GGUFWriter.fout[0]: pyproject bounds gguf to the
    versions where that is the open output file, after the header and before the tensors."""
    import gguf

    writer = gguf.GGUFWriter(None, "gemma")
    writer.add_tensor_info("t", (4,), np.dtype(np.float32), 16, raw_dtype=gguf.GGMLQuantizationType.F32)
    writer.write_header_to_file(tmp_path / "x.gguf")
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    fout = writer.fout[0]
    before = fout.tell()
    writer.write_padding(fout, fout.tell())
    np.zeros(4, np.float32).tofile(fout)
    assert fout.tell() > before and fout.name == str(tmp_path / "x.gguf")
    writer.close()
    assert [t.name for t in gguf.GGUFReader(tmp_path / "x.gguf").tensors] == ["t"]
