"""The library API: complete() and generate(), and their streaming forms.

cli, infill, eval and examples all call these. Flow:
  engines (the engine the options ask for) -> prompts (token ids within the window)
  -> engine.decode (tokens, stop by id) -> postprocess.TextCutter (cuts) -> Completion
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from cg.engine import Engine, LogitsProcessor, Timings, decode
from cg.engine.factory import get_engine
from cg.errors import InputError, NoFimError
from cg.output import blocks
from cg.output.cuts import CutRules, TextCutter
from cg.prompt import build as prompts
from cg.request import DEFAULT_CTX, DEFAULT_MAX_TOKENS, EVAL_MAX_TOKENS, GENERATE_MAX_TOKENS, RunOptions
from cg_core.tokens import SENTINELS

__all__ = ["DEFAULT_CTX", "DEFAULT_MAX_TOKENS", "EVAL_MAX_TOKENS", "GENERATE_MAX_TOKENS", "Completion", "Event",
           "RunOptions", "asks_for_one_thing", "complete", "generate", "get_engine", "stream_complete",
           "stream_generate"]


@dataclass
class Completion:
    text: str
    stop_reason: str
    prompt_tokens: int
    completion_tokens: int
    timings: Timings
    model: str
    fim: bool = True
    prompt_ids: list[int] = field(default_factory=list, repr=False)
    server: str | None = None  # the server's URL when one ran the model
    context: list[str] = field(default_factory=list)  # the other files given (--context, auto's imports)

    def to_json(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "stop_reason": self.stop_reason,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "timings": self.timings.to_json(),
            "model": self.model,
            "fim": self.fim,
            "server": self.server,
            "context": self.context,
        }


@dataclass(frozen=True)
class Event:
    """One step of a stream: final text that can be shown now, the token that produced it,
    and on the last event the finish reason and the whole result."""

    text: str
    token: int | None = None
    finish_reason: str | None = None
    result: Completion | None = None


def _stop_texts(extra: Sequence[str]) -> tuple[str, ...]:
    """Sentinel text arriving as plain text (a model that spells it out) ends the completion too."""
    return tuple(t.text for t in SENTINELS) + tuple(s for s in extra if s)


def run_stream(engine: Engine, prompt: list[int], rules: CutRules, opts: RunOptions,
               *, fim_used: bool = True,
               logits_processor: LogitsProcessor | None = None) -> Iterator[Event]:
    """Decode, cut and yield final text; the last event carries the Completion."""
    from cg.report import PromptIndicator

    timings = Timings(load_ms=engine.load_ms)
    cutter = TextCutter(rules)
    reason, count, start = "max_tokens", 0, time.perf_counter()
    indicator = PromptIndicator(opts.progress)
    steps = decode(engine, prompt, max_tokens=opts.max_tokens, sampling=opts.sampling, logit_bias=opts.logit_bias,
                   logits_processor=logits_processor, timings=timings, on_prompt=indicator.update, exact=opts.exact)
    try:
        for step in steps:
            indicator.close()  # the prompt is read: the indicator is gone before any text prints
            if step.stop:
                reason = "stop_token"
                break
            count += step.token is not None
            late = opts.max_time is not None and time.perf_counter() - start > opts.max_time
            if late:
                cutter.mark_time_limit()
                if step.token is None and not step.text:
                    cutter.end_for_time()  # the server went quiet after the time was up: end with what came
            text = cutter.feed(step.text)
            if text:
                yield Event(text, step.token)
            if cutter.done:
                break
    finally:
        indicator.close()
        steps.close()  # now, not at garbage collection: it trims the KV cache to the prompt
    tail = cutter.finish()
    info = engine.info
    result = Completion("", cutter.reason or reason, len(prompt), count, timings, info.name, fim_used, list(prompt),
                        info.server)
    yield Event(tail, None, result.stop_reason, result)


def _join(events: Iterator[Event]) -> Completion:
    parts = []
    for event in events:
        parts.append(event.text)
        if event.result is not None:
            event.result.text = "".join(parts)
            return event.result
    raise AssertionError("stream ended without a result")


def stream_complete(prefix: str, suffix: str = "", *, opts: RunOptions = RunOptions(),
                    path: str | None = None, context: Sequence[tuple[str, str]] = (),
                    spm: bool = False, max_lines: int | None = None, single_line: bool = False,
                    require_fim: bool = False, stop: Sequence[str] = (), block_stop: bool = True,
                    engine: Engine | None = None, logits_processor: LogitsProcessor | None = None) -> Iterator[Event]:
    """Fill in the middle between prefix and suffix, streaming final text as it is known.

    Args:
        prefix, suffix: the code before and after the cursor.
        opts: model, context, sampling and limits (RunOptions).
        path: the file's path, sent as the header line CodeGemma was trained with.
        context: other files as (path, content), nearest first, packed before the current one.
        spm: suffix-prefix-middle order instead of PSM.
        max_lines, single_line: cut the completion after N lines / its first line.
        require_fim: fail on a model without FIM tokens instead of continuing the prefix.
        stop: extra texts that end the completion.
        block_stop: end where the code block the cursor is in ends (indentation, brackets; the
            language from path's extension).
        engine: a loaded engine (default: the one opts names, loaded once per process).
        logits_processor: called on every step's logits (tests, constrained decoding).
    """
    if not prefix.strip() and not suffix.strip():
        raise InputError("empty input: nothing before or after the cursor",
                         "Pass code on standard input, e.g. printf 'def add(a, b):\\n<CURSOR>\\n' | cg complete")
    engine = engine or get_engine(opts)
    use_fim = engine.info.special.has_fim
    if use_fim:
        prompt = prompts.fim_prompt(engine, prefix, suffix, opts, path=path, context=context, spm=spm)
    elif require_fim:
        raise NoFimError(f"{engine.info.label} has no fill-in-the-middle tokens")
    else:
        prompts.warn_once(opts, f"no-fim:{engine.info.label}",
                          f"{engine.info.label} has no FIM tokens: continuing the prefix only")
        prompt = prompts.prefix_prompt(engine, prefix, opts)
    line_prefix = prefix.rsplit("\n", 1)[-1]
    block = blocks.cursor_block(prefix, suffix, blocks.language_of(path)) if block_stop else None
    rules = CutRules(suffix=suffix, max_lines=max_lines, single_line=single_line, stop_texts=_stop_texts(stop),
                     line_prefix=line_prefix, block=block)
    for event in run_stream(engine, prompt, rules, opts, fim_used=use_fim, logits_processor=logits_processor):
        if event.result is not None:
            event.result.context = [name for name, _ in context]
        yield event


def complete(prefix: str, suffix: str = "", *, opts: RunOptions = RunOptions(),
             path: str | None = None, context: Sequence[tuple[str, str]] = (),
             spm: bool = False, max_lines: int | None = None, single_line: bool = False,
             require_fim: bool = False, stop: Sequence[str] = (), block_stop: bool = True,
             engine: Engine | None = None, logits_processor: LogitsProcessor | None = None) -> Completion:
    """Fill in the middle and return the whole Completion (Args: see stream_complete)."""
    return _join(stream_complete(prefix, suffix, opts=opts, path=path, context=context, spm=spm,
                                 max_lines=max_lines, single_line=single_line, require_fim=require_fim, stop=stop,
                                 block_stop=block_stop, engine=engine, logits_processor=logits_processor))


def stream_generate(prompt: str, *, raw: bool = False, opts: RunOptions = RunOptions(), chat: bool | None = None,
                    stop: Sequence[str] = (), one_definition: bool | None = None, engine: Engine | None = None,
                    logits_processor: LogitsProcessor | None = None) -> Iterator[Event]:
    """Continue text (base models) or answer it (instruction models), streaming final text.

    A base model's continuation ends where it starts to repeat an earlier block of two or more
    lines; and, when the prompt asks for one thing ("Write a function that ..."), after the first
    complete top-level definition. Unless raw, an answer that starts with a fenced code block is
    that block: its body, ending at the closing fence.

    Args:
        prompt: the text to continue or the instruction to answer.
        raw: keep the answer as the model wrote it (fences and what follows them).
        opts: model, context, sampling and limits (RunOptions).
        chat: force the instruction turn format on or off (default: from the model).
        one_definition: end after the first top-level definition (None: when the prompt asks for one thing).
        stop, engine, logits_processor: as for stream_complete.
    """
    if not prompt.strip():
        raise InputError("empty prompt", "Pass a prompt as an argument or on standard input.")
    engine = engine or get_engine(opts)
    use_chat = engine.info.chat if chat is None else chat
    start_turn, end_turn = engine.info.special.start_turn, engine.info.special.eot
    if use_chat and start_turn is not None and end_turn is not None:
        ids = prompts.chat_prompt(engine, prompt, opts, start_turn, end_turn)
    else:
        ids = prompts.prefix_prompt(engine, prompt, opts)
    one = asks_for_one_thing(prompt) if one_definition is None else one_definition
    block = None if use_chat else blocks.BlockRules(repetition=True, one_definition=one)
    rules = CutRules(stop_texts=_stop_texts(stop), block=block, strip_leading=one and not use_chat, fence=not raw)
    yield from run_stream(engine, ids, rules, opts, fim_used=False, logits_processor=logits_processor)


_ONE_THING = re.compile(r"\b(?:a|an|one)\s+(?:[\w+#-]+\s+){0,4}?(?:function|class|method|program|script|snippet|"
                        r"macro|query|component|struct|procedure|routine|regex|lambda)\b", re.IGNORECASE)
_MANY = re.compile(r"\b(?:functions|classes|methods|programs|scripts|snippets|several|two|three)\b", re.IGNORECASE)


def asks_for_one_thing(prompt: str) -> bool:
    """"Write a Python function that reverses a string": one definition is the whole answer."""
    return bool(_ONE_THING.search(prompt)) and not _MANY.search(prompt)


def generate(prompt: str, *, raw: bool = False, opts: RunOptions = RunOptions(), chat: bool | None = None,
             stop: Sequence[str] = (), one_definition: bool | None = None, engine: Engine | None = None,
             logits_processor: LogitsProcessor | None = None) -> Completion:
    """Generate and return the whole Completion (Args: see stream_generate)."""
    return _join(stream_generate(prompt, raw=raw, opts=opts, chat=chat, stop=stop, one_definition=one_definition,
                                 engine=engine, logits_processor=logits_processor))
