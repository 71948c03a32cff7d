"""The library API: complete() and generate(), and their streaming forms.

cli, infill, eval, serve and examples all call these, each with one Request. Flow:
  engine factory (the engine the request names) -> prompt.build (token ids within the window)
  -> engine.decode (the one loop: every stop; the one Event stream) -> output.cuts (the cut rules)
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from cg import report
from cg.engine import Completion, Engine, Event, decode
from cg.engine.factory import get_engine
from cg.errors import InputError, NoFimError
from cg.output import blocks
from cg.output.cuts import CutRules, TextCutter
from cg.prompt.build import chat_prompt, fim_prompt, prefix_prompt
from cg.request import Request
from cg.settings import DEFAULT_CTX, DEFAULT_MAX_TOKENS, EVAL_MAX_TOKENS, GENERATE_MAX_TOKENS
from cg_core.tokens import SENTINELS

__all__ = ["DEFAULT_CTX", "DEFAULT_MAX_TOKENS", "EVAL_MAX_TOKENS", "GENERATE_MAX_TOKENS", "Completion", "Event",
           "Request", "asks_for_one_thing", "collect", "complete", "generate", "get_engine", "stream_complete",
           "stream_generate"]


def _stop_texts(request: Request) -> tuple[str, ...]:
    """Sentinel text arriving as plain text (a model that spells it out) ends the completion too."""
    return tuple(t.text for t in SENTINELS) + tuple(s for s in request.stop if s)


def collect(events: Iterator[Event]) -> Completion:
    """The Completion a stream ends with (its text is the whole text the events showed)."""
    for event in events:
        if event.result is not None:
            return event.result
    raise AssertionError("stream ended without a result")


def stream_complete(prefix: str, suffix: str = "", request: Request = Request(),
                    engine: Engine | None = None) -> Iterator[Event]:
    """Fill in the middle between prefix and suffix (the code before and after the cursor),
    streaming final text as it is known. request: every setting (cg.request.Request: the file's
    path, context files, cuts, sampling, limits); engine: a loaded engine (default: the one the
    request names, loaded once per process)."""
    if not prefix.strip() and not suffix.strip():
        raise InputError("empty input: nothing before or after the cursor",
                         "Pass code on standard input, e.g. printf 'def add(a, b):\\n<CURSOR>\\n' | cg complete")
    request = request.resolved()
    engine = engine or get_engine(request)
    use_fim = engine.info.special.has_fim
    if use_fim:
        prompt = fim_prompt(engine, prefix, suffix, request)
    elif request.require_fim:
        raise NoFimError(f"{engine.info.label} has no fill-in-the-middle tokens")
    else:
        label = engine.info.label
        report.warn(f"{label} has no FIM tokens: continuing the prefix only", quiet=request.quiet,
                    once=f"no-fim:{label}")
        prompt = prefix_prompt(engine, prefix, request)
    block = blocks.cursor_block(prefix, suffix, blocks.language_of(request.path)) if request.block_stop else None
    rules = CutRules(suffix=suffix, max_lines=request.max_lines, single_line=request.single_line,
                     stop_texts=_stop_texts(request), line_prefix=prefix.rsplit("\n", 1)[-1], block=block)
    yield from decode(engine, prompt.ids, request, cut=TextCutter(rules), fim=use_fim, truncated=prompt.truncated)


def complete(prefix: str, suffix: str = "", request: Request = Request(), engine: Engine | None = None) -> Completion:
    """Fill in the middle and return the whole Completion (see stream_complete)."""
    return collect(stream_complete(prefix, suffix, request, engine))


def stream_generate(prompt: str, request: Request = Request(), engine: Engine | None = None) -> Iterator[Event]:
    """Continue text (base models) or answer it (instruction models), streaming final text.

    A base model's continuation ends where it starts to repeat an earlier block of two or more
    lines; and, when the prompt asks for one thing ("Write a function that ..."), after the first
    complete top-level definition (request.one_definition decides when not None). Unless
    request.raw, an answer that starts with a fenced code block is that block: its body, ending
    at the closing fence. request.chat forces the instruction turn format on or off.
    """
    if not prompt.strip():
        raise InputError("empty prompt", "Pass a prompt as an argument or on standard input.")
    request = request.resolved()
    engine = engine or get_engine(request)
    use_chat = engine.info.chat if request.chat is None else request.chat
    start_turn, end_turn = engine.info.special.start_turn, engine.info.special.eot
    truncated = False
    if use_chat and start_turn is not None and end_turn is not None:
        ids = chat_prompt(engine, prompt, request, start_turn, end_turn)
    else:
        built = prefix_prompt(engine, prompt, request)
        ids, truncated = built.ids, built.truncated
    one = asks_for_one_thing(prompt) if request.one_definition is None else request.one_definition
    block = None if use_chat else blocks.BlockRules(repetition=True, one_definition=one)
    rules = CutRules(stop_texts=_stop_texts(request), block=block, strip_leading=one and not use_chat,
                     fence=not request.raw)
    yield from decode(engine, ids, request, cut=TextCutter(rules), fim=False, truncated=truncated)


_ONE_THING = re.compile(r"\b(?:a|an|one)\s+(?:[\w+#-]+\s+){0,4}?(?:function|class|method|program|script|snippet|"
                        r"macro|query|component|struct|procedure|routine|regex|lambda)\b", re.IGNORECASE)
_MANY = re.compile(r"\b(?:functions|classes|methods|programs|scripts|snippets|several|two|three)\b", re.IGNORECASE)


def asks_for_one_thing(prompt: str) -> bool:
    """"Write a Python function that reverses a string": one definition is the whole answer."""
    return bool(_ONE_THING.search(prompt)) and not _MANY.search(prompt)


def generate(prompt: str, request: Request = Request(), engine: Engine | None = None) -> Completion:
    """Generate and return the whole Completion (see stream_generate)."""
    return collect(stream_generate(prompt, request, engine))
