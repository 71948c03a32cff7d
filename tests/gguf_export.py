"""GGUF -> Hugging Face checkpoint folder (the reverse of cg's converter), for round-trip tests.

Dequantizes every tensor to float32 with gguf's own dequantizer, undoes the RMSNorm +1,
renames tensors back to their Hugging Face names, writes config.json from the GGUF metadata,
and rebuilds a SentencePiece tokenizer.model (plus tokenizer_config.json) from the GGUF
vocabulary. The protobuf is written by hand: pieces are fields 1-3 of ModelProto.pieces; the
trainer and normalizer specs are copied from a SentencePiece model trained here with the same
settings as Gemma's (BPE, byte fallback, identity normalization, ids pad 0 / eos 1 / bos 2 / unk 3).
"""

from __future__ import annotations

import json
import struct
import tempfile
from pathlib import Path

import numpy as np

_HF_BLOCK = ["input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
             "self_attn.q_norm", "self_attn.k_norm", "post_attention_layernorm", "pre_feedforward_layernorm",
             "post_feedforward_layernorm", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
_ARCH = {"gemma": ("GemmaForCausalLM", "gemma"), "gemma2": ("Gemma2ForCausalLM", "gemma2"),
         "gemma3": ("Gemma3ForCausalLM", "gemma3_text")}


def export_checkpoint(gguf_path: Path, folder: Path) -> Path:
    import gguf

    from quantize.registry import lookup

    from .synthetic import save_safetensors

    reader = gguf.GGUFReader(gguf_path)
    arch = _value(reader, "general.architecture")
    hf_arch, model_type = _ARCH[arch]
    meta = {k.split(".", 1)[1]: _value(reader, k) for k in reader.fields if k.startswith(arch + ".")}
    n_vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    config = {
        "architectures": [hf_arch], "model_type": model_type, "torch_dtype": "float32",
        "hidden_size": meta["embedding_length"], "num_hidden_layers": meta["block_count"],
        "intermediate_size": meta["feed_forward_length"], "num_attention_heads": meta["attention.head_count"],
        "num_key_value_heads": meta["attention.head_count_kv"], "head_dim": meta["attention.key_length"],
        "rms_norm_eps": meta["attention.layer_norm_rms_epsilon"], "max_position_embeddings": meta["context_length"],
        "vocab_size": n_vocab, "tie_word_embeddings": True, "hidden_activation": "gelu_pytorch_tanh",
        "bos_token_id": _value(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _value(reader, "tokenizer.ggml.eos_token_id"),
        "pad_token_id": _value(reader, "tokenizer.ggml.padding_token_id"),
    }
    if "rope.freq_base" in meta:
        config["rope_theta"] = meta["rope.freq_base"]
    if "attention.sliding_window" in meta:
        config["sliding_window"] = meta["attention.sliding_window"]
    if arch == "gemma3":
        config.update(query_pre_attn_scalar=meta["attention.key_length"], rope_local_base_freq=10000.0,
                      sliding_window_pattern=6)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))

    converter = lookup(hf_arch)(config)
    to_hf = {}
    block = [f"model.layers.{i}.{p}" for i in range(config["num_hidden_layers"]) for p in _HF_BLOCK]
    for hf in ["model.embed_tokens", "model.norm", *block]:
        try:
            to_hf[converter.map_name(hf + ".weight")] = hf + ".weight"
        except Exception:
            pass
    tensors = {}
    for t in reader.tensors:
        data = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        data = data.reshape([int(d) for d in reversed(t.shape)])
        if t.name.endswith("norm.weight"):
            data = data - 1.0
        tensors[to_hf[t.name]] = np.ascontiguousarray(data)
    save_safetensors(folder / "model.safetensors", tensors, "F32")
    del tensors
    _write_tokenizer(reader, folder)
    return folder


def _value(reader, key):
    return reader.fields[key].contents()


def _write_tokenizer(reader, folder: Path) -> None:
    tok = reader.fields["tokenizer.ggml.tokens"]
    tokens = [bytes(tok.parts[i]).decode("utf-8") for i in tok.data]
    sc = reader.fields["tokenizer.ggml.scores"]
    scores = [float(sc.parts[i][0]) for i in sc.data]
    ty = reader.fields["tokenizer.ggml.token_type"]
    types = [int(ty.parts[i][0]) for i in ty.data]
    unk = _value(reader, "tokenizer.ggml.unknown_token_id")
    pieces = bytearray()
    added = {}
    for i, (token_text, score, kind) in enumerate(zip(tokens, scores, types, strict=True)):
        text = token_text
        if kind == 4:  # user-defined: llama.cpp wrote spaces where SentencePiece has U+2581
            text = text.replace(" ", "\u2581")
            added[str(i)] = {"content": text, "special": False}
        elif kind == 3:
            added[str(i)] = {"content": text, "special": True}
        sp_type = 2 if i == unk else {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6}[kind]
        piece = _field_bytes(1, text.encode("utf-8")) + _field_float(2, score) + _field_varint(3, sp_type)
        pieces += _field_bytes(1, piece)
    trainer, normalizer = _template_specs()
    (folder / "tokenizer.model").write_bytes(bytes(pieces) + _field_bytes(2, trainer) + _field_bytes(3, normalizer))
    names = {"bos": "tokenizer.ggml.bos_token_id", "eos": "tokenizer.ggml.eos_token_id",
             "unk": "tokenizer.ggml.unknown_token_id", "pad": "tokenizer.ggml.padding_token_id"}
    config = {f"{n}_token": tokens[_value(reader, k)] for n, k in names.items()}
    config.update(add_bos_token=bool(_value(reader, "tokenizer.ggml.add_bos_token")),
                  add_eos_token=bool(_value(reader, "tokenizer.ggml.add_eos_token")),
                  added_tokens_decoder=added)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


def _template_specs() -> tuple[bytes, bytes]:
    """TrainerSpec and NormalizerSpec of a SentencePiece model trained like Gemma's."""
    from .synthetic import train_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        train_tokenizer(Path(tmp))
        raw = (Path(tmp) / "tokenizer.model").read_bytes()
    fields = dict(_top_level(raw))
    return fields[2], fields[3]


def _top_level(raw: bytes):
    pos = 0
    while pos < len(raw):
        key, pos = _read_varint(raw, pos)
        number, wire = key >> 3, key & 7
        if wire != 2:
            raise ValueError("unexpected wire type in ModelProto")
        size, pos = _read_varint(raw, pos)
        yield number, raw[pos:pos + size]
        pos += size


def _read_varint(raw: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = raw[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field_bytes(number: int, data: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _field_varint(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _field_float(number: int, value: float) -> bytes:
    return _varint(number << 3 | 5) + struct.pack("<f", value)


def perplexity(gguf_path: Path, text: str, n_ctx: int = 384) -> float:
    """llama.cpp's perplexity of `text` (its first n_ctx tokens, BOS first)."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(gguf_path), n_ctx=n_ctx, n_batch=n_ctx, logits_all=True, verbose=False)
    tokens = [llm.token_bos(), *llm.tokenize(text.encode("utf-8"), add_bos=False)][:n_ctx]
    llm.eval(tokens)
    logits = np.asarray(llm.scores[: len(tokens) - 1], dtype=np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    nll = -logp[np.arange(len(tokens) - 1), tokens[1:]].mean()
    llm.close()
    return float(np.exp(nll))
