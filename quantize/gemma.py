"""Gemma 1 (CodeGemma), Gemma 2 and Gemma 3 (text): hyper-parameters, tensor names and shapes,
RMSNorm +1 (all three compute x * (1 + w); llama.cpp computes x * w).

Each architecture's config.json is parsed once into a params dataclass with its defaults (as
mlx-lm's ModelArgs); everything after that reads the dataclass, not the dict.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from .base import Converter, Dim
from .config import CHECKS, bad_field, positive_float, section
from .errors import ConversionError

if TYPE_CHECKING:
    import gguf
    import numpy as np

P = TypeVar("P", bound="GemmaParams")


@dataclass(frozen=True)
class GemmaParams:
    """Gemma 1 / CodeGemma. 7B: head_dim 256 is not hidden / heads (3072 / 16)."""

    hidden: int
    layers: int
    ffn: int
    vocab: int
    heads: int
    kv_heads: int = 0  # 0: as many as heads
    head_dim: int = 0  # 0: hidden // heads
    context: int = 8192
    rms_eps: float = 1e-6
    rope_theta: float = 10000.0

    # dataclass field -> config.json key
    HF_KEYS: ClassVar[dict[str, str]] = {
        "hidden": "hidden_size", "layers": "num_hidden_layers", "ffn": "intermediate_size",
        "vocab": "vocab_size", "heads": "num_attention_heads", "kv_heads": "num_key_value_heads",
        "head_dim": "head_dim", "context": "max_position_embeddings", "rms_eps": "rms_norm_eps",
        "rope_theta": "rope_theta",
    }

    @classmethod
    def from_config(cls: type[P], config: dict[str, Any]) -> P:
        """The fields config.json gives, each checked by its type (config.CHECKS), then defaults."""
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            key = cls.HF_KEYS.get(f.name)
            if key is not None and config.get(key) is not None:
                kind = next(t for t in typing.get_args(hints[f.name]) or (hints[f.name],) if t is not type(None))
                values[f.name] = CHECKS[kind](key, config[key])
            elif f.default is dataclasses.MISSING:
                raise ConversionError(f"config.json has no {key or f.name!r}",
                                      "The checkpoint's config.json is incomplete; download it again.")
        params = cls(**values)
        keys = cls.HF_KEYS
        if not params.head_dim and params.hidden % params.heads:
            raise bad_field(keys["hidden"], params.hidden, f"not a multiple of {keys['heads']} {params.heads} "
                            f"(and there is no {keys['head_dim']})")
        params = dataclasses.replace(params, kv_heads=params.kv_heads or params.heads,
                                     head_dim=params.head_dim or params.hidden // params.heads)
        if params.heads % params.kv_heads:  # each KV head serves a whole group of query heads
            raise bad_field(keys["heads"], params.heads, f"not a multiple of {keys['kv_heads']} {params.kv_heads}")
        return params


@dataclass(frozen=True)
class Gemma2Params(GemmaParams):
    attn_softcap: float = 50.0
    final_softcap: float = 30.0
    sliding_window: int = 4096

    HF_KEYS: ClassVar[dict[str, str]] = {
        **GemmaParams.HF_KEYS, "attn_softcap": "attn_logit_softcapping",
        "final_softcap": "final_logit_softcapping", "sliding_window": "sliding_window",
    }


@dataclass(frozen=True)
class Gemma3Params(GemmaParams):
    """Gemma 3 configs leave several values out; these are its defaults."""

    heads: int = 8
    kv_heads: int = 4
    head_dim: int = 256
    context: int = 131072
    rope_theta: float = 1_000_000.0
    final_softcap: float | None = None
    sliding_window: int | None = None
    sliding_window_pattern: int | None = None
    rope_scaling: str | None = None  # "linear" or None
    rope_factor: float | None = None

    HF_KEYS: ClassVar[dict[str, str]] = {
        **GemmaParams.HF_KEYS, "final_softcap": "final_logit_softcapping", "sliding_window": "sliding_window",
        "sliding_window_pattern": "sliding_window_pattern",
    }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Gemma3Params:
        params = super().from_config(config)
        # Newer configs nest RoPE per attention type; the global layers' values are the model's.
        where = "rope_parameters"
        full = section(where, config.get(where))
        if "full_attention" in full:
            where += ".full_attention"
            full = section(where, full["full_attention"])
        theta = params.rope_theta
        if full.get("rope_theta") is not None:
            theta = positive_float(f"{where}.rope_theta", full["rope_theta"])
        if not full.get("rope_type"):
            where, full = "rope_scaling", section("rope_scaling", config.get("rope_scaling"))
        kind = full.get("rope_type", full.get("type"))
        factor = full.get("factor")
        linear = kind == "linear" and factor is not None
        return dataclasses.replace(params, rope_theta=theta, rope_scaling="linear" if linear else None,
                                   rope_factor=positive_float(f"{where}.factor", factor) if linear else None)


class GemmaConverter(Converter):
    hf_architectures = ("GemmaForCausalLM",)
    model_arch = "GEMMA"
    params_class: ClassVar[type[GemmaParams]] = GemmaParams
    # Per-block tensors, in llama.cpp's names, besides attention and FFN weights.
    block_norms: ClassVar[tuple[str, ...]] = ("attn_norm", "ffn_norm")

    def __init__(self, config: dict[str, Any]):
        super().__init__(config)
        self.params = self.params_class.from_config(config)

    @property
    def n_blocks(self) -> int:
        return self.params.layers

    @property
    def n_blocks_key(self) -> str:
        return self.params.HF_KEYS["layers"]

    @property
    def n_vocab(self) -> int:
        return self.params.vocab

    def skip(self, hf_name: str) -> bool:
        # lm_head is tied to the embeddings; llama.cpp reuses token_embd.
        return super().skip(hf_name) or hf_name == "lm_head.weight"

    def tensor_dims(self) -> dict[str, tuple[Dim, ...]]:
        p, key = self.params, self.params.HF_KEYS
        hidden, ffn, head = Dim(p.hidden, key["hidden"]), Dim(p.ffn, key["ffn"]), Dim(p.head_dim, key["head_dim"])
        q = Dim(p.heads * p.head_dim, f"{key['heads']}*{key['head_dim']}")
        kv = Dim(p.kv_heads * p.head_dim, f"{key['kv_heads']}*{key['head_dim']}")
        per_block = {
            "attn_q": (q, hidden), "attn_k": (kv, hidden), "attn_v": (kv, hidden), "attn_output": (hidden, q),
            "ffn_gate": (ffn, hidden), "ffn_up": (ffn, hidden), "ffn_down": (hidden, ffn),
            **{n: (head,) if n in ("attn_q_norm", "attn_k_norm") else (hidden,) for n in self.block_norms},
        }
        out = {"token_embd.weight": (Dim(p.vocab, key["vocab"]), hidden), "output_norm.weight": (hidden,)}
        for i in range(p.layers):
            out.update({f"blk.{i}.{kind}.weight": dims for kind, dims in per_block.items()})
        return out

    def transform(self, gguf_name: str, block: np.ndarray) -> np.ndarray:
        # HF Gemma's RMSNorm computes x * (1 + w); llama.cpp computes x * w.
        if gguf_name.endswith("norm.weight"):
            return block + 1
        return block

    def set_params(self, writer: gguf.GGUFWriter) -> None:
        p = self.params
        writer.add_context_length(p.context)
        writer.add_embedding_length(p.hidden)
        writer.add_block_count(p.layers)
        writer.add_feed_forward_length(p.ffn)
        writer.add_head_count(p.heads)
        writer.add_head_count_kv(p.kv_heads)
        writer.add_layer_norm_rms_eps(p.rms_eps)
        writer.add_key_length(p.head_dim)
        writer.add_value_length(p.head_dim)
        self.set_rope(writer)

    def set_rope(self, writer: gguf.GGUFWriter) -> None:
        if self.params.rope_theta != GemmaParams.rope_theta:  # llama.cpp's default for gemma
            writer.add_rope_freq_base(self.params.rope_theta)


class Gemma2Converter(GemmaConverter):
    hf_architectures = ("Gemma2ForCausalLM",)
    model_arch = "GEMMA2"
    params_class = Gemma2Params
    block_norms = ("attn_norm", "post_attention_norm", "ffn_norm", "post_ffw_norm")

    def set_params(self, writer: gguf.GGUFWriter) -> None:
        super().set_params(writer)
        p = self.params
        assert isinstance(p, Gemma2Params)
        writer.add_attn_logit_softcapping(p.attn_softcap)
        writer.add_final_logit_softcapping(p.final_softcap)
        writer.add_sliding_window(p.sliding_window)


class Gemma3Converter(GemmaConverter):
    """Gemma 3 text models (270M, 1B; the text part of the larger ones has the same tensors)."""

    hf_architectures = ("Gemma3ForCausalLM",)
    model_arch = "GEMMA3"
    params_class = Gemma3Params
    block_norms = ("attn_norm", "attn_q_norm", "attn_k_norm", "post_attention_norm", "ffn_norm", "post_ffw_norm")

    def set_params(self, writer: gguf.GGUFWriter) -> None:
        super().set_params(writer)
        p = self.params
        assert isinstance(p, Gemma3Params)
        if p.final_softcap:
            writer.add_final_logit_softcapping(p.final_softcap)
        if p.sliding_window_pattern != 1 and p.sliding_window:
            writer.add_sliding_window(p.sliding_window)

    def set_rope(self, writer: gguf.GGUFWriter) -> None:
        import gguf

        p = self.params
        assert isinstance(p, Gemma3Params)
        writer.add_rope_freq_base(p.rope_theta)
        if p.rope_scaling == "linear" and p.rope_factor:
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(p.rope_factor)
