"""Random-weight Gemma checkpoints of any shape, with a SentencePiece tokenizer trained on the spot.

CodeGemma's weights cannot be downloaded here, so tests and benchmarks build stand-ins with the
same layout: config.json, (sharded) safetensors in F32 or BF16, tokenizer.model with CodeGemma's
special-token ids (<pad> 0, <eos> 1, <bos> 2, <unk> 3, FIM 67-70, turns 106/107) and the
tokenizer config files. Conversion cost does not depend on the weights' values.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cg_core.tokens import SENTINELS, SPECIAL_TOKENS

# The sentinels at CodeGemma's ids (<pad>/<eos>/<bos>/<unk> are SentencePiece's own, 0-3).
CODEGEMMA_IDS = {t.text: t.codegemma_id for t in SENTINELS}
_CORPUS = """\
def add(a, b):
    return a + b

def fibonacci(n):
    if n < 2:
        return n
    return fibonacci(n - 1) + fibonacci(n - 2)

class Stack:
    def __init__(self):
        self.items = []

    def push(self, item):
        self.items.append(item)

    def pop(self):
        return self.items.pop()

import os
import sys
from pathlib import Path

for i in range(10):
    print(i, file=sys.stderr)
while True:
    break
result = [x * x for x in range(100) if x % 2 == 0]
with open(path, "r", encoding="utf-8") as f:
    data = f.read()
"""


@dataclass(frozen=True)
class Shape:
    hidden: int = 256
    layers: int = 2
    heads: int = 4
    kv_heads: int = 1
    head_dim: int = 64
    ffn: int = 512
    vocab: int | None = None  # None: the tokenizer's own size
    context: int = 8192


CODEGEMMA_2B = Shape(hidden=2048, layers=18, heads=8, kv_heads=1, head_dim=256, ffn=16384, vocab=256000)


def train_tokenizer(folder: Path, vocab_size: int = 640) -> int:
    """Train a byte-fallback BPE SentencePiece model with CodeGemma's special ids; return its size."""
    import sentencepiece as spm

    folder.mkdir(parents=True, exist_ok=True)
    by_id = {v: k for k, v in CODEGEMMA_IDS.items()}
    fixed = {4: "<mask>", 5: "<2mass>", 6: "[@BOS@]"}
    symbols = [by_id.get(i) or fixed.get(i) or f"<unused{i - 7}>" for i in range(4, 108)]
    corpus = folder / "corpus.txt"
    corpus.write_text(_CORPUS * 4, encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(folder / "tokenizer"), model_type="bpe", vocab_size=vocab_size,
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>",
        bos_piece="<bos>", unk_piece="<unk>", user_defined_symbols=symbols + ["\n", "\t"],
        byte_fallback=True, normalization_rule_name="identity", add_dummy_prefix=False,
        remove_extra_whitespaces=False, split_digits=True, allow_whitespace_only_pieces=True,
        hard_vocab_limit=False, minloglevel=2,
    )
    corpus.unlink()
    (folder / "tokenizer.vocab").unlink()
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    for text, token in CODEGEMMA_IDS.items():
        assert sp.PieceToId(text) == token, (text, sp.PieceToId(text))
    _write_tokenizer_config(folder)
    return sp.vocab_size()


def _write_tokenizer_config(folder: Path) -> None:
    added = {str(t.codegemma_id): {"content": t.text, "special": not t.sentinel} for t in SPECIAL_TOKENS}
    config = {"add_bos_token": True, "add_eos_token": False, "bos_token": "<bos>", "eos_token": "<eos>",
              "unk_token": "<unk>", "pad_token": "<pad>", "added_tokens_decoder": added}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    special = {"bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>", "pad_token": "<pad>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(special), encoding="utf-8")


def gemma_tensors(shape: Shape, vocab: int) -> dict[str, tuple[int, ...]]:
    q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    out = {"model.embed_tokens.weight": (vocab, shape.hidden), "model.norm.weight": (shape.hidden,)}
    for i in range(shape.layers):
        p = f"model.layers.{i}."
        out.update({
            p + "input_layernorm.weight": (shape.hidden,),
            p + "self_attn.q_proj.weight": (q, shape.hidden),
            p + "self_attn.k_proj.weight": (kv, shape.hidden),
            p + "self_attn.v_proj.weight": (kv, shape.hidden),
            p + "self_attn.o_proj.weight": (shape.hidden, q),
            p + "post_attention_layernorm.weight": (shape.hidden,),
            p + "mlp.gate_proj.weight": (shape.ffn, shape.hidden),
            p + "mlp.up_proj.weight": (shape.ffn, shape.hidden),
            p + "mlp.down_proj.weight": (shape.hidden, shape.ffn),
        })
    return out


def write_checkpoint(folder: Path, shape: Shape = Shape(), *, dtype: str = "F32", seed: int = 0,
                     shards: int = 1, tokenizer_size: int = 640, scale: float = 0.5) -> Path:
    """Write a random GemmaForCausalLM checkpoint; weights are N(0, scale/sqrt(fan_in))."""
    import numpy as np

    n_tok = train_tokenizer(folder, tokenizer_size)
    vocab = shape.vocab or n_tok
    config = {
        "architectures": ["GemmaForCausalLM"], "model_type": "gemma", "hidden_size": shape.hidden,
        "num_hidden_layers": shape.layers, "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads, "head_dim": shape.head_dim, "intermediate_size": shape.ffn,
        "vocab_size": vocab, "max_position_embeddings": shape.context, "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0, "hidden_act": "gelu_pytorch_tanh",
        "torch_dtype": "float32" if dtype == "F32" else "bfloat16",
        "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0,
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    rng = np.random.default_rng(seed)
    names = list(gemma_tensors(shape, vocab).items())
    groups = [names[i::shards] for i in range(shards)]
    weight_map = {}
    for n, group in enumerate(groups, start=1):
        file = "model.safetensors" if shards == 1 else f"model-{n:05d}-of-{shards:05d}.safetensors"
        tensors = {}
        for name, dims in group:
            if len(dims) == 1:
                tensors[name] = rng.normal(0, 0.1, dims).astype(np.float32)
            else:
                tensors[name] = (rng.standard_normal(dims, dtype=np.float32) * (scale / np.sqrt(dims[-1])))
            weight_map[name] = file
        save_safetensors(folder / file, tensors, dtype)
    if shards > 1:
        index = {"metadata": {}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index), encoding="utf-8")
    return folder


def save_safetensors(path: Path, tensors: dict[str, Any], dtype: str = "F32") -> None:
    """Minimal safetensors writer (F32, or BF16 by rounding to nearest even), tensor by tensor."""
    import numpy as np

    header, offset, blobs = {}, 0, []
    for name, array in tensors.items():
        nbytes = array.size * (4 if dtype == "F32" else 2)
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
        blobs.append(name)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name in blobs:
            array = np.ascontiguousarray(tensors[name], dtype=np.float32)
            if dtype == "BF16":
                bits = array.view(np.uint32)
                array = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
            array.tofile(f)
