"""llama.cpp's sampler chain for one sequence, built as llama-cpp-python 0.3.36's Llama builds
it (so greedy and seeded runs pick what they picked there): logit bias, repetition penalties
over the last 64 generated tokens, then greedy (temperature 0), the whole distribution
(temperature < 0), or top-k, typical (1.0: off), top-p, min-p, temperature and a seeded draw.

A logits processor (tests, constrained decoding) is called on the logits in llama.cpp's buffer
before the chain, with the sequence's tokens so far, as Llama called it.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from cg.engine.protocol import LogitsProcessor, Sampling

if TYPE_CHECKING:
    from cg.engine.local.context import Context

PENALTY_LAST_N = 64  # llama-cpp-python's last_n_tokens_size


class Sampler:
    """One chain; sample() picks a token from an output row and records it (penalties)."""

    def __init__(self, context: Context, sampling: Sampling, logit_bias: dict[int, float] | None = None,
                 logits_processor: LogitsProcessor | None = None):
        lib = self._lib = context.lib
        self._context = context
        self._processor = logits_processor
        self.chain: Any = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        n_vocab = context.n_vocab()
        if logit_bias:
            biases = (lib.llama_logit_bias * len(logit_bias))()
            for i, (token, bias) in enumerate(logit_bias.items()):
                biases[i].token, biases[i].bias = int(token), float(bias)
            self._add(lib.llama_sampler_init_logit_bias(n_vocab, len(logit_bias), biases))
        self._add(lib.llama_sampler_init_penalties(n_vocab, PENALTY_LAST_N, sampling.repeat_penalty, 0.0, 0.0))
        temp = sampling.temperature
        if temp < 0:
            self._add(lib.llama_sampler_init_dist(ctypes.c_uint32(sampling.seed).value))
        elif temp == 0:
            self._add(lib.llama_sampler_init_greedy())
        else:
            self._add(lib.llama_sampler_init_top_k(sampling.top_k))
            self._add(lib.llama_sampler_init_typical(1.0, 1))
            self._add(lib.llama_sampler_init_top_p(sampling.top_p, 1))
            self._add(lib.llama_sampler_init_min_p(sampling.min_p, 1))
            self._add(lib.llama_sampler_init_temp(temp))
            self._add(lib.llama_sampler_init_dist(ctypes.c_uint32(sampling.seed).value))

    def _add(self, sampler: Any) -> None:
        self._lib.llama_sampler_chain_add(self.chain, sampler)

    def sample(self, row: int, tokens: Sequence[int]) -> int:
        """The token for output row `row` of the context's last decode; `tokens` what the
        sequence holds (the processor's input_ids)."""
        if self._processor is not None:
            import numpy as np

            logits = self._context.logits(row)
            logits[:] = self._processor(np.asarray(tokens, dtype=np.intc), logits)
        return int(self._lib.llama_sampler_sample(self.chain, self._context.ctx, row))

    def close(self) -> None:
        if self.chain:
            self._lib.llama_sampler_free(self.chain)
            self.chain = None

    def __enter__(self) -> Sampler:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
