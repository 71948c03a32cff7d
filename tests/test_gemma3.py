"""Gemma 2 and 3 through cg's converter: tiny checkpoints against the numpy reference, and the
real Gemma 3 270M dequantized to a checkpoint and converted back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader

from quantize.convert import convert
from quantize.registry import supported

from . import gemma_reference as ref
from .gguf_export import export_checkpoint, perplexity
from .helpers import PROMPT_TEXT, llama_logits

CODE = (Path(__file__).parent.parent / "cg" / "complete.py").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def roundtrip(bundled_gguf, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gemma3")
    ckpt = export_checkpoint(bundled_gguf, tmp / "gemma-3-270m")
    out = convert(ckpt, tmp / "gemma-3-270m-q8_0.gguf", type="q8_0").path
    return ckpt, out


def test_gemma_2_and_3_are_registered():
    assert {"GemmaForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM"} <= set(supported())


def later_gemma(tiny_ckpt, folder, arch: str) -> Path:
    """The tiny Gemma 1 checkpoint turned into a Gemma 2 or 3 one: the extra norms (random, so
    a missing +1 or a swapped name shows), the config keys, six layers for Gemma 3's local/global mix."""
    import json
    import shutil

    from safetensors.numpy import load_file

    from .synthetic import save_safetensors

    shutil.copytree(tiny_ckpt, folder)
    config = json.loads((folder / "config.json").read_text())
    tensors = load_file(str(folder / "model.safetensors"))
    rng = np.random.default_rng(7)
    n_layers = 6 if arch == "Gemma3ForCausalLM" else config["num_hidden_layers"]
    for i in range(config["num_hidden_layers"], n_layers):  # more blocks: copies of the last one
        for name in [k for k in tensors if k.startswith(f"model.layers.{config['num_hidden_layers'] - 1}.")]:
            tensors[name.replace(f"layers.{config['num_hidden_layers'] - 1}.", f"layers.{i}.")] = tensors[name].copy()
    hidden, hd = config["hidden_size"], config["head_dim"]
    for i in range(n_layers):
        extra = {"post_attention_layernorm": hidden, "pre_feedforward_layernorm": hidden,
                 "post_feedforward_layernorm": hidden}
        if arch == "Gemma3ForCausalLM":
            extra.update({"self_attn.q_norm": hd, "self_attn.k_norm": hd})
        for name, size in extra.items():
            tensors[f"model.layers.{i}.{name}.weight"] = (rng.standard_normal(size) * 0.3).astype(np.float32)
    save_safetensors(folder / "model.safetensors", tensors, "F32")
    config.update(architectures=[arch], num_hidden_layers=n_layers, query_pre_attn_scalar=hd, sliding_window=512)
    if arch == "Gemma2ForCausalLM":
        config.update(model_type="gemma2", attn_logit_softcapping=50.0, final_logit_softcapping=30.0)
    else:
        config.update(model_type="gemma3_text", rope_theta=1_000_000.0, rope_local_base_freq=10000.0,
                      sliding_window_pattern=6)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("arch", ["Gemma2ForCausalLM", "Gemma3ForCausalLM"])
def test_tiny_gemma_2_and_3_match_the_numpy_reference(tiny_ckpt, tmp_path, arch):
    import sentencepiece as spm

    folder = later_gemma(tiny_ckpt, tmp_path / "ckpt", arch)
    out = convert(folder, tmp_path / "out.gguf", type="f32").path
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    prompt = [2, *sp.encode(PROMPT_TEXT)]
    config, weights = ref.load_weights(folder)
    want = ref.forward(config, weights, prompt)
    got = llama_logits(out, prompt)
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err < 1e-3, err
    assert (got.argmax(-1) == want.argmax(-1)).all()


def test_round_trip_keeps_metadata_and_vocabulary(bundled_gguf, roundtrip):
    _, out = roundtrip
    a, b = GGUFReader(bundled_gguf), GGUFReader(out)
    for key in ("general.architecture", "gemma3.context_length", "gemma3.embedding_length", "gemma3.block_count",
                "gemma3.feed_forward_length", "gemma3.attention.head_count", "gemma3.attention.head_count_kv",
                "gemma3.attention.key_length", "gemma3.attention.value_length", "gemma3.rope.freq_base",
                "gemma3.attention.sliding_window", "gemma3.attention.layer_norm_rms_epsilon",
                "tokenizer.ggml.model", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token"):
        assert a.fields[key].contents() == pytest.approx(b.fields[key].contents()), key
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores"):
        assert a.fields[key].contents() == b.fields[key].contents(), key
    # Token types equal except the turn tokens, which cg types CONTROL on purpose (already so here).
    ta, tb = a.fields["tokenizer.ggml.token_type"].contents(), b.fields["tokenizer.ggml.token_type"].contents()
    assert [i for i, (x, y) in enumerate(zip(ta, tb, strict=True)) if x != y] == []
    assert {t.name for t in a.tensors} == {t.name for t in b.tensors}
    shapes = {t.name: list(t.shape) for t in b.tensors}
    assert all(list(t.shape) == shapes[t.name] for t in a.tensors)


def test_round_trip_perplexity_within_two_percent(bundled_gguf, roundtrip):
    _, out = roundtrip
    original, again = perplexity(bundled_gguf, CODE), perplexity(out, CODE)
    assert np.isfinite(original) and original < 50  # a real model reads this code well
    assert abs(again - original) / original < 0.02, (original, again)
