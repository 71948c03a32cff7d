"""Prompt layouts as token ids: PSM, SPM, file header, multi-file packing, budget, chat turns.

Pure functions. The layouts follow the CodeGemma report:
  PSM  <bos>[ctx...][path\n]<|fim_prefix|>P<|fim_suffix|>S<|fim_middle|>
  SPM  <bos>[ctx...][path\n]<|fim_suffix|>S<|fim_prefix|>P<|fim_middle|>   (llama.cpp's order)
  ctx  path\ncontent<|file_separator|>   one per context file, before the current file
Exactly one BOS, at the very start; sentinels go in as ids, never as text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

STRETCH = 16  # lines: the window's top and bottom stay put while the cursor moves within a stretch


@dataclass(frozen=True)
class FimIds:
    bos: int
    pre: int
    suf: int
    mid: int
    sep: int | None


@dataclass
class Trimmed:
    prefix: list[int]
    suffix: list[int]
    dropped_prefix: int = 0
    dropped_suffix: int = 0


def layout(
    ids: FimIds,
    prefix: list[int],
    suffix: list[int],
    *,
    header: Sequence[int] = (),
    context: Sequence[list[int]] = (),
    spm: bool = False,
) -> list[int]:
    out = [ids.bos]
    for chunk in context:
        out += chunk
    out += header
    if spm:
        out += [ids.suf, *suffix, ids.pre, *prefix, ids.mid]
    else:
        out += [ids.pre, *prefix, ids.suf, *suffix, ids.mid]
    return out


def context_chunk(path_and_content: list[int], sep: int) -> list[int]:
    """`path\\ncontent<|file_separator|>`: the caller tokenizes the text part."""
    return [*path_and_content, sep]


def trim_to_budget(prefix: list[int], suffix: list[int], budget: int) -> Trimmed:
    """Keep the tokens nearest the cursor: drop prefix from the top, suffix from the bottom.

    When both must shrink the prefix keeps three quarters of the budget, since the code before
    the cursor says more about the middle than the code after it.
    """
    budget = max(budget, 0)
    if len(prefix) + len(suffix) <= budget:
        return Trimmed(list(prefix), list(suffix))
    keep_suffix = min(len(suffix), max(budget // 4, budget - len(prefix)))
    keep_prefix = min(len(prefix), budget - keep_suffix)
    keep_suffix = min(len(suffix), budget - keep_prefix)
    kept_prefix = list(prefix[len(prefix) - keep_prefix:]) if keep_prefix else []
    return Trimmed(kept_prefix, list(suffix[:keep_suffix]),
                   len(prefix) - keep_prefix, len(suffix) - keep_suffix)


def stable_window(prefix: str, suffix: str, budget: int, count: Callable[[str], int]) -> tuple[str, str]:
    """The text around the cursor to keep when it does not all fit `budget` tokens: from a top
    line to a bottom line, both on a grid of STRETCH lines, chosen from the cursor's stretch
    (not the cursor itself). So while the cursor moves within a stretch the prompt keeps its head
    and its tail token for token, and a cache of the last prompt is reused around the change.

    The cursor's stretch is kept whole (split between prefix and suffix wherever the cursor is);
    the rest of the budget is shared as trim_to_budget shares it (the prefix keeps three quarters
    when both sides are long), in whole stretches. count(text) gives a text's tokens; the result
    may still need trim_to_budget (a stretch longer than the budget, or tokens that count
    differently once joined).
    """
    before, after = prefix.split("\n"), suffix.split("\n")
    cursor = len(before) - 1  # the cursor's line, counting from the first line of the prefix
    lines = before[:-1] + [before[-1] + after[0]] + after[1:]
    top = cursor // STRETCH * STRETCH
    bottom = top + STRETCH

    def size(start: int) -> int:
        return count("\n".join(lines[start:start + STRETCH]) + "\n")

    room = budget - size(top)

    def sizes(starts: range) -> list[int]:
        """Stretch sizes nearest first, only as far as the room (what lies beyond cannot fit)."""
        out: list[int] = []
        for start in starts:
            if sum(out) > room:
                break
            out.append(size(start))
        return out

    above = sizes(range(top - STRETCH, -1, -STRETCH))
    below = sizes(range(bottom, len(lines), STRETCH))
    down = min(sum(below), max(room // 4, room - sum(above)))
    top -= STRETCH * _fitting(above, room - down)
    bottom += STRETCH * _fitting(below, down)
    kept_after = after[: max(1, bottom - cursor)]
    return "\n".join(before[top:]), "\n".join(kept_after) + ("\n" if len(kept_after) < len(after) else "")


def _fitting(sizes: list[int], limit: int) -> int:
    """How many of sizes, in order, fit within limit together."""
    used = 0
    for n, size in enumerate(sizes):
        used += size
        if used > limit:
            return n
    return len(sizes)


def pack_context(chunks: list[list[int]], budget: int) -> tuple[list[list[int]], int]:
    """Keep whole context files, nearest first (the given order), while they fit.

    Returns the kept chunks in prompt order (farthest first, so the nearest file sits next to
    the current one) and the number of files dropped.
    """
    kept: list[list[int]] = []
    used = 0
    for chunk in chunks:
        if used + len(chunk) > budget:
            continue
        kept.append(chunk)
        used += len(chunk)
    return kept[::-1], len(chunks) - len(kept)


def chat_turns(bos: int, start_turn: int, end_turn: int, user_turn: list[int], newline: list[int],
               model_header: list[int]) -> list[int]:
    """<bos><start_of_turn>user\\n...<end_of_turn>\\n<start_of_turn>model\\n (no system role).

    user_turn is the tokenized "user\\n" + message; model_header is "model\\n".
    """
    return [bos, start_turn, *user_turn, end_turn, *newline, start_turn, *model_header]
