"""An independent numpy forward pass of Gemma 1, 2 and 3 (text), straight from the Hugging Face
definitions.

Reads the safetensors checkpoint itself (not cg's reader) and shares no code with the converter,
so agreement with llama.cpp on the converted GGUF checks the conversion end to end.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file


def load_weights(folder: Path) -> tuple[dict, dict]:
    config = json.loads((folder / "config.json").read_text())
    weights = {}
    for file in sorted(folder.glob("*.safetensors")):
        weights.update({k: v.astype(np.float64) for k, v in load_file(str(file)).items()})
    return config, weights


def rms_norm(x, w, eps):
    # HF Gemma: x / rms(x) * (1 + w)
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * (1.0 + w)


def rope_neox(x, positions, theta):
    # x: (T, heads, d); rotate-half ("neox") layout as HF's apply_rotary_pos_emb
    d = x.shape[-1]
    inv = 1.0 / theta ** (np.arange(0, d, 2) / d)
    ang = positions[:, None] * inv[None, :]
    cos = np.concatenate([np.cos(ang)] * 2, axis=-1)[:, None, :]
    sin = np.concatenate([np.sin(ang)] * 2, axis=-1)[:, None, :]
    half = d // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def forward(config: dict, w: dict, tokens: list[int]) -> np.ndarray:
    """Logits for every position, shape (T, vocab).

    Gemma 2 adds norms after attention and after the MLP, attention-logit and final-logit
    soft-capping and a query scale of query_pre_attn_scalar**-0.5; Gemma 3 drops the capping and
    adds RMSNorm on each head's q and k. Sliding windows are left out: the test prompts are
    shorter than any window, and llama.cpp's local layers then see what global ones see (with
    Gemma 3's local RoPE base on them, which is applied here).
    """
    arch = config["architectures"][0]
    gemma2, gemma3 = arch == "Gemma2ForCausalLM", arch == "Gemma3ForCausalLM"
    hidden, eps = config["hidden_size"], config["rms_norm_eps"]
    n_heads, n_kv, hd = config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]
    theta = config.get("rope_theta", 10000.0)
    scale = config.get("query_pre_attn_scalar", hd) ** -0.5 if (gemma2 or gemma3) else hd ** -0.5
    attn_cap = config.get("attn_logit_softcapping") if gemma2 else None
    final_cap = config.get("final_logit_softcapping") if (gemma2 or gemma3) else None
    T = len(tokens)
    pos = np.arange(T, dtype=np.float64)
    emb = w["model.embed_tokens.weight"]
    x = emb[tokens] * math.sqrt(hidden)
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        local = gemma3 and (i + 1) % config.get("sliding_window_pattern", 6) != 0
        layer_theta = config.get("rope_local_base_freq", 10000.0) if local else theta
        n = rms_norm(x, w[p + "input_layernorm.weight"], eps)
        q = (n @ w[p + "self_attn.q_proj.weight"].T).reshape(T, n_heads, hd)
        k = (n @ w[p + "self_attn.k_proj.weight"].T).reshape(T, n_kv, hd)
        if gemma3:
            q = rms_norm(q, w[p + "self_attn.q_norm.weight"], eps)
            k = rms_norm(k, w[p + "self_attn.k_norm.weight"], eps)
        q, k = rope_neox(q, pos, layer_theta), rope_neox(k, pos, layer_theta)
        v = (n @ w[p + "self_attn.v_proj.weight"].T).reshape(T, n_kv, hd)
        group = n_heads // n_kv
        k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
        scores = np.einsum("thd,shd->hts", q, k) * scale
        if attn_cap:
            scores = np.tanh(scores / attn_cap) * attn_cap
        scores = scores + mask
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        scores /= scores.sum(-1, keepdims=True)
        attn = np.einsum("hts,shd->thd", scores, v).reshape(T, n_heads * hd) @ w[p + "self_attn.o_proj.weight"].T
        if gemma2 or gemma3:
            h = x + rms_norm(attn, w[p + "post_attention_layernorm.weight"], eps)
            n2 = rms_norm(h, w[p + "pre_feedforward_layernorm.weight"], eps)
        else:
            h = x + attn
            n2 = rms_norm(h, w[p + "post_attention_layernorm.weight"], eps)
        mlp = gelu_tanh(n2 @ w[p + "mlp.gate_proj.weight"].T) * (n2 @ w[p + "mlp.up_proj.weight"].T)
        mlp = mlp @ w[p + "mlp.down_proj.weight"].T
        x = h + (rms_norm(mlp, w[p + "post_feedforward_layernorm.weight"], eps) if (gemma2 or gemma3) else mlp)
    logits = rms_norm(x, w["model.norm.weight"], eps) @ emb.T
    return np.tanh(logits / final_cap) * final_cap if final_cap else logits
