"""What happens to generated text: cuts, trailing blank lines, fences. Pure code, no model.

TextCutter is fed decoded pieces as they arrive and hands back only text that no later piece
can take back, so the streamed output and the joined output are always the same.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from cg.output.blocks import CLOSERS, OPENERS, BlockRules, BlockWatcher

_TRAILING_BLANK = re.compile(r"(?:\r?\n[ \t\r]*)+\Z")
_LEADING_BLANK = re.compile(r"(?:[ \t\r]*\n)+")
# A fenced code block's opening line (a language name may follow), its closing line, and a partial
# line that may still become the closing one.
_OPENING_FENCE = re.compile(r"```[\w.+#-]*[ \t]*\r?")
_CLOSING_FENCE = re.compile(r"[ \t]*```+[ \t]*\r?")
_CLOSING_FENCE_START = re.compile(r"[ \t]*`*[ \t]*\r?")


@dataclass(frozen=True)
class CutRules:
    suffix: str = ""  # text after the cursor: the completion stops where it starts repeating it
    max_lines: int | None = None
    single_line: bool = False
    stop_texts: tuple[str, ...] = ()  # sentinel text arriving as plain text, user stop words
    line_prefix: str = ""  # the cursor's line up to the cursor (for the rest-of-line rule)
    block: BlockRules | None = None  # where the code block ends (blocks.py)
    fence: bool = False  # an answer that starts with a fenced code block is that block's body (FenceCut)
    strip_leading: bool = False  # drop blank lines before the first line with text


def repeats_rest_of_line(before: str, line: str, rest: str) -> bool:
    """Does `line` end by typing again `rest`, the text after the cursor on its line?

    `before` is everything from the start of the cursor's line up to `line`. `print(` +
    `len(x))` with `)` after the cursor: yes, one `)` too many. `print(` + `len(x)`: no, that
    `)` closes len's bracket. Where the rest holds brackets, it counts as a repeat only if
    keeping it would leave more closing than opening brackets from the line start to the rest.
    """
    body = line.rstrip()
    if not rest or not body.endswith(rest):
        return False
    if body.strip() == rest or not any(c in OPENERS + CLOSERS for c in rest):
        return True
    whole = before + body + rest
    return sum(whole.count(c) for c in CLOSERS) > sum(whole.count(c) for c in OPENERS)


def first_nonblank_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def drop_trailing_blank_lines(text: str) -> str:
    text = _TRAILING_BLANK.sub("", text)
    return "" if not text.strip() else text


class PrefixMatcher:
    """The longest prefix of `pattern` that the text fed so far ends with, ignoring trailing
    whitespace (as `text.rstrip()` would). Knuth-Morris-Pratt, its failure table built only as
    far as a match reaches: the work is linear in the text fed, whatever the pattern's length (a
    cursor in a 16 MiB line must not cost a pass over the line's rest per token)."""

    def __init__(self, pattern: str):
        self.pattern = pattern
        self.fail: list[int] = []  # fail[i]: the longest proper border of pattern[:i + 1]
        self.state = 0  # the prefix length the text ends with
        self.body_state = 0  # the same, at the text's last non-whitespace character
        self.body_end = 0  # the length of the text without its trailing whitespace
        self.fed = 0
        self.steps = 0  # characters compared: bounded work, for the tests

    def feed(self, text: str) -> None:
        pattern, m, fail, q = self.pattern, len(self.pattern), self.fail, self.state
        for i, ch in enumerate(text, start=self.fed):
            while q and (q == m or pattern[q] != ch):
                q = fail[q - 1]
                self.steps += 1
            self.steps += 1
            if q < m and pattern[q] == ch:
                q += 1
                if len(fail) < q:
                    self._extend()
            if not ch.isspace():
                self.body_state, self.body_end = q, i + 1
        self.state, self.fed = q, self.fed + len(text)

    def _extend(self) -> None:
        """One more entry of the failure table (a match only grows one character at a time)."""
        pattern, fail, i = self.pattern, self.fail, len(self.fail)
        k = fail[i - 1] if i else 0
        while i and k and pattern[k] != pattern[i]:
            k = fail[k - 1]
            self.steps += 1
        fail.append(k + 1 if i and pattern[k] == pattern[i] else 0)


class TextCutter:
    def __init__(self, rules: CutRules):
        self.rules = rules
        self.overlap = first_nonblank_line(rules.suffix)
        # The rest of the cursor's line, when the cursor is inside a line after some code (at a
        # line start, completions are whole lines and the suffix's first line stays its own).
        self.rest = rules.suffix.split("\n", 1)[0].strip() if rules.line_prefix.strip() else ""
        self.text = ""
        self.emitted = 0
        self.reason: str | None = None
        self._time_mark: int | None = None
        self._ended_line = False  # the text kept by a cut ended its last line
        # The cursor sits at a line start and the suffix starts a line of its own: a completion of
        # whole lines must keep its last line break, or prefix + completion + suffix glues two lines.
        self._keep_break = (not rules.line_prefix and bool(rules.suffix)
                            and not rules.suffix.startswith(("\n", "\r")))
        self.blocks = BlockWatcher(rules.block) if rules.block else None
        self._block_hold: int | None = None
        self._rest_match = PrefixMatcher(self.rest) if self.rest else None
        self._fence = FenceCut() if rules.fence else None

    @property
    def done(self) -> bool:
        """A rule cut the text, or it is complete (its code block closed): no more pieces."""
        return self.reason is not None or (self._fence is not None and self._fence.closed)

    def mark_time_limit(self) -> None:
        """The time budget is spent: end at the first newline from here on."""
        if self._time_mark is None:
            self._time_mark = len(self.text)
            self._apply(*self._scan())

    def end_for_time(self) -> None:
        """The time budget is spent and no more text is coming soon: end at the last line break
        (a text without one is kept whole: it is a single line in progress)."""
        if not self.done and self._fence is not None:
            self._add(self._fence.finish())  # what the fence held back is all there is
        if not self.done:
            self._apply(self.text.rfind("\n") + 1 or len(self.text), "time_limit")

    def feed(self, piece: str) -> str:
        """Add a decoded piece; return the text that is now final."""
        if self.done:
            return ""
        self._add(self._fence.feed(piece) if self._fence is not None else piece)
        if self.rules.strip_leading and self.emitted == 0:
            blank = _LEADING_BLANK.match(self.text)
            if blank and self.text[blank.end():].strip():
                self.emitted = blank.end()  # never shown: counted as passed over
        self._apply(*self._scan())
        if self.reason is not None:  # a rule ended the text just now
            return ""
        safe = max(self._safe_length(), self.emitted)
        out, self.emitted = self.text[self.emitted:safe], safe
        return out

    def _add(self, piece: str) -> None:
        self.text += piece
        if self._rest_match is not None:
            self._rest_match.feed(piece)

    def finish(self) -> str:
        """No more pieces: return the rest of the final text."""
        closed = self.reason is None and self.done  # the fenced block closed before the text ended
        if self._fence is not None and self.reason is None:
            self._add(self._fence.finish())  # what it held: a last line that was not the closing fence
            self._apply(*self._scan())
        if self.reason is None:
            start = self.text.rfind("\n") + 1
            last = self.text[start:]
            if self.overlap and last.strip() == self.overlap:
                self._apply(start, "suffix_overlap")
            elif self.rest and repeats_rest_of_line(self.rules.line_prefix + self.text[:start], last, self.rest):
                # The last line is the one the rest of the cursor's line follows.
                self._apply(start + len(last.rstrip()) - len(self.rest), "suffix_overlap")
        if self.reason is None and self.blocks is not None:
            # No more text: the last line is complete, so one the watcher held is decided now.
            verdict = self.blocks.check(self.text + "\n")
            if verdict.cut is not None and verdict.cut <= len(self.text):
                self._apply(verdict.cut, verdict.reason)
        ended_line = self._ended_line if self.reason is not None else _TRAILING_BLANK.search(self.text) is not None
        final = drop_trailing_blank_lines(self.text)
        if self._keep_break and ended_line and final:
            final += "\n"
        out = final[self.emitted:]
        self.emitted = len(final)
        if closed:
            self.reason = "end_of_block"
        return out

    def _apply(self, cut: int | None, reason: str | None) -> None:
        if cut is not None:
            kept = self.text[:cut]
            self._ended_line = _TRAILING_BLANK.search(kept) is not None or self.text[cut:cut + 1] == "\n"
            self.text = kept
            self.reason = reason

    def _scan(self) -> tuple[int | None, str | None]:
        """The earliest place a rule ends the text, and which rule."""
        best: tuple[int | None, str | None] = (None, None)

        def consider(pos: int, reason: str) -> None:
            nonlocal best
            if best[0] is None or pos < best[0]:
                best = (pos, reason)

        for stop in self.rules.stop_texts:
            pos = self.text.find(stop)
            if pos >= 0:
                consider(pos, "stop_token")
        _line_cuts(self.text, self.rules, self.rest, self.overlap, self._time_mark, consider)
        if self.blocks is not None:
            verdict = self.blocks.check(self.text)
            self._block_hold = verdict.hold
            if verdict.cut is not None:
                consider(verdict.cut, verdict.reason)
        return best

    def _safe_length(self) -> int:
        text = self.text
        if not text.strip():
            return 0
        hold = len(text)
        blank = _TRAILING_BLANK.search(text)
        if blank:
            hold = blank.start()
        line_start = text.rfind("\n") + 1
        held_lines = [self._block_hold] if self._block_hold is not None else []
        if self.overlap and self.overlap.startswith(text[line_start:].lstrip()):
            held_lines.append(line_start)
        for start in held_lines:
            # Hold the line and the line break(s) before it: a cut there drops them too.
            before = _TRAILING_BLANK.search(text[:start])
            hold = min(hold, before.start() if before else start)
        for stop in self.rules.stop_texts:
            # A stop longer than the text can only be held by a prefix the text ends with: k <= len(text)
            # keeps a long stop text (cg complete --stop, a server request) from costing its length squared.
            for k in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:k]):
                    hold = min(hold, len(text) - k)
                    break
        if self._rest_match is not None and self._rest_match.body_state:
            # The last line may still end by repeating the rest of the cursor's line.
            hold = min(hold, self._rest_match.body_end - self._rest_match.body_state)
        return hold


def _line_cuts(text: str, rules: CutRules, rest: str, overlap: str, time_mark: int | None,
               consider: Callable[[int, str], None]) -> None:
    """The line rules' places to end the text (TextCutter._scan): each complete line in turn."""
    start, seen_text, count = 0, False, 0
    while (end := text.find("\n", start)) >= 0:
        line = text[start:end]
        count += 1
        if count == 1 and rest and repeats_rest_of_line(rules.line_prefix, line, rest):
            # Cursor inside a line: its first line typed the rest again, then went on.
            consider(len(line.rstrip()) - len(rest), "suffix_overlap")
        if overlap and line.strip() == overlap:
            consider(start, "suffix_overlap")
        seen_text = seen_text or bool(line.strip())
        if rules.single_line and seen_text:
            consider(end, "max_lines")
        if rules.max_lines and count >= rules.max_lines:
            consider(end, "max_lines")
        if time_mark is not None and end >= time_mark:
            consider(end, "time_limit")
        start = end + 1


class FenceCut:
    """An answer that starts with a fenced code block is that block: its body streams as it
    comes, and the answer ends at the closing fence (a chat model's prose after it is not code).

    Held back only while undecided: the first line, until it shows whether it opens a fence, and
    a line that may still become the closing fence, with the line break before it.
    """

    def __init__(self) -> None:
        self.text = ""
        self.emitted = 0
        self.fenced: bool | None = None
        self.body = 0  # where the body starts (after the opening fence line)
        self.line = 0  # the start of the first line not yet known to be body
        self.closed = False

    def feed(self, piece: str) -> str:
        if self.closed:
            return ""
        self.text += piece
        if self.fenced is None and not self._decide():
            return ""
        if not self.fenced:
            return self._release(len(self.text))
        while (end := self.text.find("\n", self.line)) >= 0:
            if _CLOSING_FENCE.fullmatch(self.text, self.line, end):
                return self._close()
            self.line = end + 1
        partial_may_close = _CLOSING_FENCE_START.fullmatch(self.text, self.line) is not None
        return self._release(self._before_line() if partial_may_close else len(self.text))

    def finish(self) -> str:
        """No more text: a last line that is the closing fence goes too."""
        if self.closed:
            return ""
        if self.fenced and _CLOSING_FENCE.fullmatch(self.text, self.line):
            return self._close()
        return self._release(len(self.text))

    def _decide(self) -> bool:
        start = len(self.text) - len(self.text.lstrip())
        end = self.text.find("\n", start)
        if end < 0:
            return False
        self.fenced = _OPENING_FENCE.fullmatch(self.text, start, end) is not None
        if self.fenced:
            self.emitted = self.body = self.line = end + 1
        return True

    def _before_line(self) -> int:
        """Where the body ends if the line at self.line is the closing fence: before its line break."""
        return self.line - 1 if self.line > self.body else self.line

    def _close(self) -> str:
        self.closed = True
        return self._release(self._before_line())

    def _release(self, upto: int) -> str:
        out = self.text[self.emitted:upto]
        self.emitted = max(self.emitted, upto)
        return out


def strip_fence(text: str) -> str:
    """The whole answer through FenceCut: the body of a fenced code block it starts with, else the answer."""
    fence = FenceCut()
    return fence.feed(text) + fence.finish()
