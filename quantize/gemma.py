"""Gemma 1 (CodeGemma), Gemma 2 and Gemma 3 (text) conversion: hyper-parameters, tensor names
and shapes, RMSNorm +1 (all three compute x * (1 + w); llama.cpp computes x * w)."""

from __future__ import annotations

from cg.errors import ConversionError

from .registry import register


class Converter:
    """Base: map HF tensor names with gguf's table, check shapes, no transforms."""

    gguf_arch = ""  # gguf.MODEL_ARCH member name
    arch_name = ""  # general.architecture

    def __init__(self, config: dict):
        self.config = config

    @property
    def n_blocks(self) -> int:
        return int(self.config["num_hidden_layers"])

    def skip(self, hf_name: str) -> bool:
        return hf_name.endswith(".rotary_emb.inv_freq")

    def map_name(self, hf_name: str) -> str:
        import gguf

        table = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, self.gguf_arch), self.n_blocks)
        name = table.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ConversionError(f"unexpected tensor {hf_name!r} for {self.arch_name}",
                                  "The checkpoint does not match its config.json architecture.")
        return name

    def expected_shape(self, gguf_name: str) -> tuple[int, ...] | None:
        return None

    def transform(self, gguf_name: str, block):
        return block

    def set_params(self, writer) -> None:
        raise NotImplementedError


@register("GemmaForCausalLM")
class GemmaConverter(Converter):
    gguf_arch = "GEMMA"
    arch_name = "gemma"

    def skip(self, hf_name: str) -> bool:
        # lm_head is tied to the embeddings; llama.cpp reuses token_embd.
        return super().skip(hf_name) or hf_name == "lm_head.weight"

    @property
    def head_dim(self) -> int:
        c = self.config
        # 7B: head_dim 256 is not hidden / heads (3072 / 16).
        return int(c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"])

    def expected_shape(self, gguf_name: str) -> tuple[int, ...] | None:
        c = self.config
        hidden, ffn = c["hidden_size"], c["intermediate_size"]
        q = c["num_attention_heads"] * self.head_dim
        kv = c.get("num_key_value_heads", c["num_attention_heads"]) * self.head_dim
        kind = gguf_name.split(".")[-2]
        shapes = {
            "token_embd": (c["vocab_size"], hidden), "output_norm": (hidden,), "attn_norm": (hidden,),
            "ffn_norm": (hidden,), "attn_q": (q, hidden), "attn_k": (kv, hidden), "attn_v": (kv, hidden),
            "attn_output": (hidden, q), "ffn_gate": (ffn, hidden), "ffn_up": (ffn, hidden),
            "ffn_down": (hidden, ffn),
            # Gemma 2 and 3: norms after attention and after the FFN; Gemma 3: q/k norms per head.
            "post_attention_norm": (hidden,), "post_ffw_norm": (hidden,),
            "attn_q_norm": (self.head_dim,), "attn_k_norm": (self.head_dim,),
        }
        return shapes.get(kind)

    def transform(self, gguf_name: str, block):
        # HF Gemma's RMSNorm computes x * (1 + w); llama.cpp computes x * w.
        if gguf_name.endswith("norm.weight"):
            return block + 1
        return block

    # Defaults where config.json leaves a value out (Gemma 3 configs omit several).
    default_context, default_heads, default_kv_heads = 8192, None, None

    def set_params(self, writer) -> None:
        c = self.config
        heads = c.get("num_attention_heads", self.default_heads)
        writer.add_context_length(c.get("max_position_embeddings", self.default_context))
        writer.add_embedding_length(c["hidden_size"])
        writer.add_block_count(self.n_blocks)
        writer.add_feed_forward_length(c["intermediate_size"])
        writer.add_head_count(heads)
        writer.add_head_count_kv(c.get("num_key_value_heads", self.default_kv_heads or heads))
        writer.add_layer_norm_rms_eps(c.get("rms_norm_eps", 1e-6))
        writer.add_key_length(self.head_dim)
        writer.add_value_length(self.head_dim)
        self.set_rope(writer)

    def set_rope(self, writer) -> None:
        theta = self.config.get("rope_theta", 10000.0)
        if theta != 10000.0:
            writer.add_rope_freq_base(theta)


@register("Gemma2ForCausalLM")
class Gemma2Converter(GemmaConverter):
    gguf_arch = "GEMMA2"
    arch_name = "gemma2"

    def set_params(self, writer) -> None:
        super().set_params(writer)
        c = self.config
        writer.add_attn_logit_softcapping(c.get("attn_logit_softcapping") or 50.0)
        writer.add_final_logit_softcapping(c.get("final_logit_softcapping") or 30.0)
        writer.add_sliding_window(c.get("sliding_window", 4096))


@register("Gemma3ForCausalLM")
class Gemma3Converter(GemmaConverter):
    """Gemma 3 text models (270M, 1B; the text part of the larger ones has the same tensors)."""

    gguf_arch = "GEMMA3"
    arch_name = "gemma3"
    default_context, default_heads, default_kv_heads = 131072, 8, 4

    @property
    def head_dim(self) -> int:
        return int(self.config.get("head_dim", 256))

    def set_params(self, writer) -> None:
        super().set_params(writer)
        c = self.config
        if c.get("final_logit_softcapping"):
            writer.add_final_logit_softcapping(c["final_logit_softcapping"])
        if c.get("sliding_window_pattern") != 1 and c.get("sliding_window"):
            writer.add_sliding_window(c["sliding_window"])

    def set_rope(self, writer) -> None:
        c = self.config
        rope = c.get("rope_parameters") or {}
        full = rope.get("full_attention", rope) if isinstance(rope, dict) else {}
        writer.add_rope_freq_base(full.get("rope_theta", c.get("rope_theta", 1_000_000.0)))
        scaling = full if full.get("rope_type") else (c.get("rope_scaling") or {})
        if scaling.get("rope_type", scaling.get("type")) == "linear" and scaling.get("factor"):
            import gguf

            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(scaling["factor"])
