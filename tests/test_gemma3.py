"""Gemma 3 through cg's converter: the real Gemma 3 270M, dequantized to a checkpoint and back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader

from quantize.convert import convert
from quantize.registry import supported

from .gguf_export import export_checkpoint, perplexity

CODE = (Path(__file__).parent.parent / "cg" / "complete.py").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def roundtrip(bundled_gguf, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gemma3")
    ckpt = export_checkpoint(bundled_gguf, tmp / "gemma-3-270m")
    out = convert(ckpt, tmp / "gemma-3-270m-q8_0.gguf", type="q8_0")
    return ckpt, out


def test_gemma_2_and_3_are_registered():
    assert {"GemmaForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM"} <= set(supported())


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
    assert [i for i, (x, y) in enumerate(zip(ta, tb)) if x != y] == []
    assert {t.name for t in a.tensors} == {t.name for t in b.tensors}
    shapes = {t.name: list(t.shape) for t in b.tensors}
    assert all(list(t.shape) == shapes[t.name] for t in a.tensors)


def test_round_trip_perplexity_within_two_percent(bundled_gguf, roundtrip):
    _, out = roundtrip
    original, again = perplexity(bundled_gguf, CODE), perplexity(out, CODE)
    assert np.isfinite(original) and original < 50  # a real model reads this code well
    assert abs(again - original) / original < 0.02, (original, again)
