"""The one decode loop over an engine's Pieces, shared by every engine: stop ids, the token
limit, timings, the text of each token."""

from __future__ import annotations

import codecs
import time
from collections.abc import Generator, Sequence

from cg.engine.protocol import Engine, LogitsProcessor, PromptProgress, Sampling, Timings, TokenEvent
from cg.errors import UsageError


def decode(engine: Engine, prompt: Sequence[int], *, max_tokens: int, sampling: Sampling = Sampling(),
           logit_bias: dict[int, float] | None = None, logits_processor: LogitsProcessor | None = None,
           timings: Timings | None = None, on_prompt: PromptProgress | None = None,
           exact: bool = False) -> Generator[TokenEvent, None, None]:
    """The one decode loop: up to max_tokens tokens after prompt; the last event is a stop token
    or the limit. Closing the generator ends the generation."""
    if logit_bias and engine.info.n_vocab is not None:
        check_token_ids(list(logit_bias), engine.info.n_vocab, "--logit-bias")
    timings = timings if timings is not None else Timings()
    stops = engine.info.special.stop_ids
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    start, first, count = time.perf_counter(), None, 0
    pieces = engine.generate(prompt, max_tokens=max_tokens, sampling=sampling, logit_bias=logit_bias,
                             logits_processor=logits_processor, timings=timings, on_prompt=on_prompt, exact=exact)
    try:
        for piece in pieces:
            now = time.perf_counter()
            if first is None and (piece.ids or piece.text):
                first = now
                timings.prompt_ms = (now - start) * 1000
            if first is not None:
                timings.generation_ms = (now - first) * 1000
            if piece.cached is not None:
                timings.cached_tokens = piece.cached
            text = decoder.decode(piece.text) if isinstance(piece.text, bytes) else piece.text
            for i, token in enumerate(piece.ids):
                if token in stops:
                    yield TokenEvent(token, "", True)
                    return
                count += 1
                yield TokenEvent(token, text if i == len(piece.ids) - 1 else "", False)
                if count >= max_tokens:
                    return
            if not piece.ids:
                yield TokenEvent(None, text, False)
            if piece.stop_id is not None:
                yield TokenEvent(piece.stop_id, "", True)
                return
    finally:
        pieces.close()


def check_token_ids(ids: Sequence[int], n_vocab: int, what: str) -> None:
    """Refuse ids outside the vocabulary (a negative one would index from the end)."""
    bad = [i for i in ids if not 0 <= i < n_vocab]
    if bad:
        raise UsageError(f"{what}: token id {bad[0]} is not in the model's vocabulary (0..{n_vocab - 1})",
                         "Use an id the model has, e.g. 70 for <|file_separator|> in CodeGemma.")
