"""Prompts as token ids, within the engine's window: FIM (PSM/SPM, file header, context files),
prefix continuation and chat turns. The layouts themselves are fim.py's; this module tokenizes
through the engine, decides what fits, and says once per process what was left out.
"""

from __future__ import annotations

from dataclasses import dataclass

from cg import report
from cg.engine import Engine
from cg.errors import PromptTooLongError
from cg.prompt import fim
from cg.request import Request


@dataclass(frozen=True)
class Prompt:
    """A prompt's token ids, and whether text was left out to fit the window (llama-server's
    `truncated`)."""

    ids: list[int]
    truncated: bool = False


def fim_prompt(engine: Engine, prefix: str, suffix: str, request: Request) -> Prompt:
    """The FIM prompt for prefix and suffix, with request's path (header line), context files
    and order (PSM or SPM)."""
    path, context = request.path, request.context
    sp = engine.info.special
    header = engine.tokenize_text(path + "\n") if path else []
    budget, limit = prompt_budget(engine, request, 4 + len(header))  # BOS and three sentinels
    trimmed = _window(engine, prefix, suffix, budget)
    chunks = []
    if context and sp.fim_sep is None:
        report.warn("the model has no <|file_separator|> token: --context files are ignored", quiet=request.quiet)
    elif context and sp.fim_sep is not None:
        chunks = [fim.context_chunk(engine.tokenize_text(f"{p}\n{c}"), sp.fim_sep) for p, c in context]
    room = budget - len(trimmed.prefix) - len(trimmed.suffix)
    kept, dropped = fim.pack_context(chunks, room)
    truncated = _left_out(request, limit, trimmed.dropped_prefix, trimmed.dropped_suffix, dropped)
    pre, suf, mid = sp.fim_triple()
    ids = fim.FimIds(engine.info.bos, pre, suf, mid, sp.fim_sep)
    return Prompt(fim.layout(ids, trimmed.prefix, trimmed.suffix, header=header, context=kept, spm=request.spm),
                  truncated)


def _window(engine: Engine, prefix: str, suffix: str, budget: int) -> fim.Trimmed:
    """The prefix and suffix tokens that fit: all of them, else a stable window of whole lines
    (fim.stable_window), trimmed to the token if need be."""
    pre, suf = engine.tokenize_text(prefix), engine.tokenize_text(suffix)
    if len(pre) + len(suf) <= budget:
        return fim.Trimmed(pre, suf)
    kept_prefix, kept_suffix = fim.stable_window(prefix, suffix, budget, lambda text: len(engine.tokenize_text(text)))
    trimmed = fim.trim_to_budget(engine.tokenize_text(kept_prefix), engine.tokenize_text(kept_suffix), budget)
    return fim.Trimmed(trimmed.prefix, trimmed.suffix, len(pre) - len(trimmed.prefix), len(suf) - len(trimmed.suffix))


def prefix_prompt(engine: Engine, prefix: str, request: Request) -> Prompt:
    budget, limit = prompt_budget(engine, request, 1)
    trimmed = _window(engine, prefix, "", budget)  # a stable top line, as for FIM prompts
    truncated = _left_out(request, limit, trimmed.dropped_prefix, 0, 0)
    return Prompt([engine.info.bos, *trimmed.prefix], truncated)


def chat_prompt(engine: Engine, message: str, request: Request, start_turn: int, end_turn: int) -> list[int]:
    tok = engine.tokenize_text
    prompt = fim.chat_turns(engine.info.bos, start_turn, end_turn, tok("user\n" + message), tok("\n"),
                            tok("model\n"))
    n_ctx = engine.info.n_ctx
    if len(prompt) + request.max_tokens > n_ctx:
        raise PromptTooLongError(f"the prompt ({len(prompt)} tokens) and --max-tokens {request.max_tokens} "
                                 f"do not fit in a {n_ctx}-token context")
    return prompt


def prompt_budget(engine: Engine, request: Request, overhead: int) -> tuple[int, str]:
    """Tokens the prompt's text may take, and what limits them: "the prompt window" (--max-prompt-tokens,
    CPU_WINDOW on the CPU) or "the context" (--ctx less --max-tokens)."""
    n_ctx = engine.info.n_ctx
    room = n_ctx - request.max_tokens
    if room - overhead <= 0:
        raise PromptTooLongError(
            f"--max-tokens {request.max_tokens} leaves no room for the prompt in a {n_ctx}-token context")
    window = request.resolved().max_prompt_tokens or engine.info.default_window
    if window < room:
        return max(0, window - overhead), f"the {window}-token prompt window"
    return room - overhead, f"the {n_ctx}-token context"


def _left_out(request: Request, limit: str, before: int, after: int, files: int) -> bool:
    """Say once per process (not with -q) what did not fit, and how to make room; whether anything did not."""
    if not (before or after or files):
        return False
    parts = [f"{before} tokens before the cursor" if before else "", f"{after} after it" if after else "",
             f"{files} context file(s)" if files else ""]
    widen = ("widen it with --max-prompt-tokens N (or CG_MAX_PROMPT_TOKENS)" if "window" in limit
             else "raise --ctx or lower --max-tokens")
    report.note(f"{limit} left out " + ", ".join(p for p in parts if p) + f"; {widen}.", quiet=request.quiet,
                once="left_out")
    return True
