"""The library API: complete() and generate(), and their streaming forms.

cli, infill, eval and examples all call these. Flow:
  store (which GGUF) -> engine (load) -> fim (prompt ids within budget)
  -> engine.stream (tokens, stop by id) -> postprocess.TextCutter (cuts) -> Completion
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from quantize.tokens import SENTINELS

from . import blocks, fim, store
from .engine import Engine, LogitsProcessor, Sampling, Timings, check_token_ids
from .errors import InputError, NoFimError, PromptTooLongError
from .local import LocalEngine, load
from .postprocess import CutRules, TextCutter, strip_fence

# Defaults, declared once: the CLI's options and RunOptions use these.
DEFAULT_CTX = 4096  # not the model's 8192: keeps memory and the CPU prompt cost modest
DEFAULT_MAX_TOKENS = 128  # complete / infill
GENERATE_MAX_TOKENS = 256
EVAL_MAX_TOKENS = 256


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

    def to_json(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "stop_reason": self.stop_reason,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "timings": {k: round(v, 3) for k, v in asdict(self.timings).items()},
            "model": self.model,
            "fim": self.fim,
            "server": self.server,
        }


@dataclass(frozen=True)
class Event:
    """One step of a stream: final text that can be shown now, the token that produced it,
    and on the last event the finish reason and the whole result."""

    text: str
    token: int | None = None
    finish_reason: str | None = None
    result: Completion | None = None


@dataclass(frozen=True)
class RunOptions:
    """How to load and run the model; shared by every command."""

    model: str | None = None
    n_ctx: int = DEFAULT_CTX
    threads: int | None = None
    seed: int = 0
    verbose: bool = False
    temperature: float = Sampling.temperature
    top_k: int = Sampling.top_k
    top_p: float = Sampling.top_p
    max_tokens: int = DEFAULT_MAX_TOKENS
    max_time: float | None = None
    logit_bias: dict[int, float] | None = None
    quiet: bool = False
    # Share evaluated prompts across processes (cg/prompt_cache.py); the CLI turns it on.
    prompt_cache: bool = False
    gpu_layers: int | None = None  # None: every layer when llama.cpp has a GPU backend, else none
    server: str | None = None  # run on this llama-server or OpenAI-compatible server instead
    server_api: str | None = None  # "llama" or "openai"; None: found from the URL
    api_key: str | None = None
    max_prompt_tokens: int | None = None  # None: engine.default_window (2048 on CPU, else the context)
    progress: bool = False  # show prompt evaluation on stderr (the CLI, on a terminal)

    def sampling(self) -> Sampling:
        return Sampling(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, seed=self.seed)


def warn(opts: RunOptions, message: str) -> None:
    if not opts.quiet:
        print(f"Warning: {message}", file=sys.stderr)


_engines: dict[tuple[Any, ...], Engine] = {}


def get_engine(opts: RunOptions) -> Engine:
    """The engine opts ask for: a server (opts.server), else the local model, loaded once per
    process (repeated calls reuse the model and its KV cache)."""
    if opts.server:
        key: tuple[Any, ...] = ("server", opts.server, opts.server_api, opts.api_key, opts.model)
        if key not in _engines:
            from .server import connect

            _engines[key] = connect(opts.server, api=opts.server_api, api_key=opts.api_key, model=opts.model,
                                    n_ctx=opts.n_ctx)
        return _engines[key]
    return _local_engine(opts)


def _local_engine(opts: RunOptions) -> LocalEngine:
    resolved = store.resolve(opts.model)
    key = (str(resolved.path.resolve()), opts.n_ctx, opts.threads, opts.verbose, opts.gpu_layers)
    if key not in _engines:
        if resolved.bundled and not opts.quiet:
            store.notice_once("bundled", "Note: using the bundled Gemma 3 270M (a general model without FIM). "
                              "For real code completion run: cg download codegemma-2b")
        recorded = resolved.record.special_ids if resolved.record else None
        for old in [k for k, e in _engines.items() if isinstance(e, LocalEngine)]:
            del _engines[old]  # one local model at a time: models are large
        _engines[key] = load(resolved.path, n_ctx=opts.n_ctx, n_threads=opts.threads, seed=opts.seed,
                             verbose=opts.verbose, recorded_ids=recorded, gpu_layers=opts.gpu_layers)
    engine = _engines[key]
    assert isinstance(engine, LocalEngine)
    from . import prompt_cache

    if opts.prompt_cache and prompt_cache.enabled():
        limit = prompt_cache.limit_bytes()  # read each time: a bad value is an error, whatever ran before
        if engine.prompt_cache is None:
            engine.prompt_cache = prompt_cache.PromptCache.for_model(engine.path, engine.state_version, limit,
                                                                     lambda message: None)
        engine.prompt_cache.limit = limit
        engine.prompt_cache.on_warning = lambda message: warn(opts, message)
    else:
        engine.prompt_cache = None
    return engine


def _stop_texts(extra: Sequence[str]) -> tuple[str, ...]:
    """Sentinel text arriving as plain text (a model that spells it out) ends the completion too."""
    return tuple(t.text for t in SENTINELS) + tuple(s for s in extra if s)


def build_fim_prompt(engine: Engine, prefix: str, suffix: str, opts: RunOptions, *,
                     path: str | None = None, context: Sequence[tuple[str, str]] = (),
                     spm: bool = False) -> list[int]:
    sp = engine.special
    header = engine.tokenize_text(path + "\n") if path else []
    budget, limit = prompt_budget(engine, opts, 4 + len(header))  # BOS and three sentinels
    trimmed = fim.trim_to_budget(engine.tokenize_text(prefix), engine.tokenize_text(suffix), budget)
    chunks = []
    if context and sp.fim_sep is None:
        warn(opts, "the model has no <|file_separator|> token: --context files are ignored")
    elif context and sp.fim_sep is not None:
        chunks = [fim.context_chunk(engine.tokenize_text(f"{p}\n{c}"), sp.fim_sep) for p, c in context]
    room = budget - len(trimmed.prefix) - len(trimmed.suffix)
    kept, dropped = fim.pack_context(chunks, room)
    _left_out(opts, limit, trimmed.dropped_prefix, trimmed.dropped_suffix, dropped)
    pre, suf, mid = sp.fim_triple()
    ids = fim.FimIds(engine.bos, pre, suf, mid, sp.fim_sep)
    return fim.layout(ids, trimmed.prefix, trimmed.suffix, header=header, context=kept, spm=spm)


def build_prefix_prompt(engine: Engine, prefix: str, opts: RunOptions) -> list[int]:
    budget, limit = prompt_budget(engine, opts, 1)
    ids = engine.tokenize_text(prefix)
    if len(ids) > budget:
        _left_out(opts, limit, len(ids) - budget, 0, 0)
        ids = ids[len(ids) - budget:]
    return [engine.bos, *ids]


def prompt_budget(engine: Engine, opts: RunOptions, overhead: int) -> tuple[int, str]:
    """Tokens the prompt's text may take, and what limits them: "the prompt window" (--max-prompt-tokens,
    2048 on the CPU) or "the context" (--ctx less --max-tokens)."""
    room = engine.n_ctx - opts.max_tokens
    if room - overhead <= 0:
        raise PromptTooLongError(
            f"--max-tokens {opts.max_tokens} leaves no room for the prompt in a {engine.n_ctx}-token context")
    window = opts.max_prompt_tokens or engine.default_window
    if window < room:
        return max(0, window - overhead), f"the {window}-token prompt window"
    return room - overhead, f"the {engine.n_ctx}-token context"


_noted: set[str] = set()


def _left_out(opts: RunOptions, limit: str, before: int, after: int, files: int) -> None:
    """Say once per process (not with -q) what did not fit, and how to make room."""
    if not (before or after or files) or opts.quiet or "left_out" in _noted:
        return
    _noted.add("left_out")
    parts = [f"{before} tokens before the cursor" if before else "", f"{after} after it" if after else "",
             f"{files} context file(s)" if files else ""]
    widen = ("widen it with --max-prompt-tokens N (or CG_MAX_PROMPT_TOKENS)" if "window" in limit
             else "raise --ctx or lower --max-tokens")
    print(f"Note: {limit} left out " + ", ".join(p for p in parts if p) + f"; {widen}.", file=sys.stderr)


def build_chat_prompt(engine: Engine, message: str, opts: RunOptions, start_turn: int, end_turn: int) -> list[int]:
    tok = engine.tokenize_text
    prompt = fim.chat_turns(engine.bos, start_turn, end_turn, tok("user\n" + message), tok("\n"), tok("model\n"))
    if len(prompt) + opts.max_tokens > engine.n_ctx:
        raise PromptTooLongError(f"the prompt ({len(prompt)} tokens) and --max-tokens {opts.max_tokens} "
                                 f"do not fit in a {engine.n_ctx}-token context")
    return prompt


def run_stream(engine: Engine, prompt: list[int], rules: CutRules, opts: RunOptions,
               *, fim_used: bool = True,
               logits_processor: LogitsProcessor | None = None) -> Iterator[Event]:
    """Decode, cut and yield final text; the last event carries the Completion."""
    from .progress import PromptIndicator

    timings = Timings(load_ms=engine.load_ms)
    cutter = TextCutter(rules)
    if opts.logit_bias:
        check_token_ids(list(opts.logit_bias), engine.n_vocab, "--logit-bias")
    reason, count, start = "max_tokens", 0, time.perf_counter()
    indicator = PromptIndicator(opts.progress)
    steps = engine.stream(prompt, max_tokens=opts.max_tokens, sampling=opts.sampling(), logit_bias=opts.logit_bias,
                          logits_processor=logits_processor, timings=timings, on_prompt=indicator.update)
    try:
        for step in steps:
            indicator.close()  # the prompt is read: the indicator is gone before any text prints
            if step.stop:
                reason = "stop_token"
                break
            count += 1
            if opts.max_time is not None and time.perf_counter() - start > opts.max_time:
                cutter.mark_time_limit()
            text = cutter.feed(step.text)
            if text:
                yield Event(text, step.token)
            if cutter.done:
                break
    finally:
        indicator.close()
        steps.close()  # now, not at garbage collection: it trims the KV cache to the prompt
    tail = cutter.finish()
    result = Completion("", cutter.reason or reason, len(prompt), count, timings,
                        engine.name, fim_used, list(prompt), engine.server)
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
    use_fim = engine.special.has_fim
    if use_fim:
        prompt = build_fim_prompt(engine, prefix, suffix, opts, path=path, context=context, spm=spm)
    elif require_fim:
        raise NoFimError(f"{engine.label} has no fill-in-the-middle tokens")
    else:
        warn(opts, f"{engine.label} has no FIM tokens: continuing the prefix only")
        prompt = build_prefix_prompt(engine, prefix, opts)
    line_prefix = prefix.rsplit("\n", 1)[-1]
    block = None
    if block_stop:
        language = blocks.language_of(path)
        block = blocks.BlockRules(language, blocks.state_at_cursor(prefix, language), line_prefix, suffix,
                                  indentation=True)
    rules = CutRules(suffix=suffix, max_lines=max_lines, single_line=single_line, stop_texts=_stop_texts(stop),
                     line_prefix=line_prefix, block=block)
    yield from run_stream(engine, prompt, rules, opts, fim_used=use_fim, logits_processor=logits_processor)


def complete(prefix: str, suffix: str = "", *, opts: RunOptions = RunOptions(),
             path: str | None = None, context: Sequence[tuple[str, str]] = (),
             spm: bool = False, max_lines: int | None = None, single_line: bool = False,
             require_fim: bool = False, stop: Sequence[str] = (), block_stop: bool = True,
             engine: Engine | None = None, logits_processor: LogitsProcessor | None = None) -> Completion:
    """Fill in the middle and return the whole Completion (Args: see stream_complete)."""
    return _join(stream_complete(prefix, suffix, opts=opts, path=path, context=context, spm=spm,
                                 max_lines=max_lines, single_line=single_line, require_fim=require_fim, stop=stop,
                                 block_stop=block_stop, engine=engine, logits_processor=logits_processor))


def stream_generate(prompt: str, *, opts: RunOptions = RunOptions(), chat: bool | None = None,
                    stop: Sequence[str] = (), one_definition: bool | None = None, engine: Engine | None = None,
                    logits_processor: LogitsProcessor | None = None) -> Iterator[Event]:
    """Continue text (base models) or answer it (instruction models), streaming raw text.

    A base model's continuation ends where it starts to repeat an earlier block of two or more
    lines; and, when the prompt asks for one thing ("Write a function that ..."), after the first
    complete top-level definition.

    Args:
        prompt: the text to continue or the instruction to answer.
        opts: model, context, sampling and limits (RunOptions).
        chat: force the instruction turn format on or off (default: from the model).
        one_definition: end after the first top-level definition (None: when the prompt asks for one thing).
        stop, engine, logits_processor: as for stream_complete.
    """
    if not prompt.strip():
        raise InputError("empty prompt", "Pass a prompt as an argument or on standard input.")
    engine = engine or get_engine(opts)
    use_chat = engine.is_chat if chat is None else chat
    start_turn, end_turn = engine.special.start_turn, engine.special.eot
    if use_chat and start_turn is not None and end_turn is not None:
        ids = build_chat_prompt(engine, prompt, opts, start_turn, end_turn)
    else:
        ids = build_prefix_prompt(engine, prompt, opts)
    one = asks_for_one_thing(prompt) if one_definition is None else one_definition
    block = None if use_chat else blocks.BlockRules(repetition=True, one_definition=one)
    rules = CutRules(stop_texts=_stop_texts(stop), block=block, strip_leading=one and not use_chat)
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
    """Generate (Args: see stream_generate); unless raw, an answer that is one fenced code block
    becomes its body."""
    result = _join(stream_generate(prompt, opts=opts, chat=chat, stop=stop, one_definition=one_definition,
                                   engine=engine, logits_processor=logits_processor))
    if not raw:
        result.text = strip_fence(result.text)
    return result
