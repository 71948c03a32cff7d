"""The one decode loop, shared by every engine and every caller: it turns an engine's Pieces
into the one Event stream and decides every stop in one place: a stop id, the token limit, the
time limit, and the cut rules (a Cutter, output/cuts.py), in that order of precedence. The last
event carries the Completion, its text collected here and nowhere else."""

from __future__ import annotations

import codecs
import time
from collections.abc import Iterator, Sequence

from cg.engine.protocol import Completion, Cutter, Engine, Event, Timings
from cg.errors import UsageError
from cg.report import PromptIndicator
from cg.request import Request
from cg_core.tokens import BY_NAME

_FSEP = BY_NAME["fim_sep"]  # the usual example of a token id


class Uncut:
    """No cut rules: the text as it comes (evaluation, tests)."""

    done = False
    reason: str | None = None

    def feed(self, piece: str) -> str:
        return piece

    def mark_time_limit(self) -> None:
        pass

    def end_for_time(self) -> None:
        self.reason = "max_time"

    def finish(self) -> str:
        return ""


def decode(engine: Engine, prompt: Sequence[int], request: Request, *, cut: Cutter | None = None,
           fim: bool = True, truncated: bool = False) -> Iterator[Event]:
    """Generate after prompt as request says, cut by cut; one Event per step that gives a token
    or text, then a last one with the finish reason and the Completion (truncated: the prompt
    builder left text out, as the Completion says). Closing the stream ends
    the generation (a local engine trims its cache to the prompt, a server's stream is closed)."""
    request = request.resolved()
    cutter: Cutter = cut if cut is not None else Uncut()
    if request.logit_bias and engine.info.n_vocab is not None:
        check_token_ids(list(request.logit_bias), engine.info.n_vocab, "--logit-bias")
    timings = Timings(load_ms=engine.load_ms)
    stops = engine.info.special.stop_ids
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
    indicator = PromptIndicator(request.progress)
    reason, count, start, first, stop = "max_tokens", 0, time.perf_counter(), None, None
    parts: list[str] = []
    pieces = engine.generate(prompt, max_tokens=request.max_tokens, sampling=request.sampling,
                             logit_bias=request.logit_bias, logits_processor=request.logits_processor,
                             timings=timings, on_prompt=indicator.update, exact=bool(request.exact))
    try:
        for piece in pieces:
            indicator.close()  # the prompt is read: the indicator is gone before any text prints
            now = time.perf_counter()
            if first is None and (piece.ids or piece.text):
                first = now
                timings.prompt_ms = (now - start) * 1000
            if first is not None:
                timings.generation_ms = (now - first) * 1000
            if piece.cached is not None:
                timings.cached_tokens = piece.cached
            text = utf8.decode(piece.text) if isinstance(piece.text, bytes) else piece.text
            ids = list(piece.ids)
            stop = next((i for i in ids if i in stops), None)
            if stop is not None:  # its text is never part of the output, nor is what follows it
                ids, text = ids[: ids.index(stop)], ""
            if len(ids) > request.max_tokens - count:  # the limit falls inside a piece: its text is not whole
                ids, text = ids[: request.max_tokens - count], ""
            if stop is not None or piece.stop_id is not None:
                reason = "stop_token"
            # a server's text without ids is one token a piece (it sends one a chunk)
            count += len(ids) or int(bool(text) and not piece.ids)
            if request.max_time is not None and now - start > request.max_time:
                cutter.mark_time_limit()
                if not piece.ids and not text:
                    cutter.end_for_time()  # the server went quiet after the time was up: end with what came
            shown = cutter.feed(text) if ids or stop is None else ""
            parts.append(shown)
            for i, token in enumerate(ids):
                yield Event(shown if i == len(ids) - 1 else "", token)
            if not ids and shown:
                yield Event(shown)
            if reason == "stop_token" or cutter.done or count >= request.max_tokens:
                break
    finally:
        indicator.close()
        pieces.close()  # now, not at garbage collection: it trims the KV cache to the prompt
    parts.append(cutter.finish())
    info = engine.info
    result = Completion("".join(parts), cutter.reason or reason, len(prompt), count, timings, info.name, fim,
                        list(prompt), info.server, [name for name, _ in request.context], truncated)
    yield Event(parts[-1], stop, result.stop_reason, result)


def check_token_ids(ids: Sequence[int], n_vocab: int, what: str) -> None:
    """Refuse ids outside the vocabulary (a negative one would index from the end)."""
    bad = [i for i in ids if not 0 <= i < n_vocab]
    if bad:
        raise UsageError(f"{what}: token id {bad[0]} is not in the model's vocabulary (0..{n_vocab - 1})",
                         f"Use an id the model has, e.g. {_FSEP.codegemma_id} for {_FSEP.text} in CodeGemma.")
