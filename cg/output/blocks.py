"""Where a code block ends: languages, a small lexer for brackets outside strings and comments,
and the lines that continue a statement at a lower indentation.

Used by postprocess.TextCutter for block-aware stopping. Regular expressions and a character
scanner, not parsers: the code around the cursor is half-written and rarely parses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import PurePath


class Language(StrEnum):
    PYTHON = "python"
    C_LIKE = "c-like"  # JS/TS, C/C++, Java, Go, Rust, C#, Kotlin, Swift, PHP
    SHELL = "shell"
    GENERIC = "generic"  # unknown: Python's lexing, every language's continuations


_EXTENSIONS = {
    Language.PYTHON: (".py", ".pyi", ".pyw"),
    Language.C_LIKE: (".js", ".jsx", ".mjs", ".cjs", ".ts", ".tsx", ".mts", ".cts", ".c", ".h", ".cc", ".cpp",
                      ".cxx", ".hpp", ".hh", ".hxx", ".java", ".go", ".rs", ".cs", ".kt", ".kts", ".swift",
                      ".scala", ".php", ".dart"),
    Language.SHELL: (".sh", ".bash", ".zsh", ".ksh"),
}
# Lines that continue the statement above even at a lower indentation (besides closing brackets).
_CONTINUATIONS = {
    Language.PYTHON: ("else", "elif", "except", "finally"),
    Language.C_LIKE: ("else", "catch", "finally"),
    Language.SHELL: ("else", "elif", "fi", "done", "esac", "then", "do", ";;"),
}
_CONTINUATIONS[Language.GENERIC] = tuple(sorted({w for ws in _CONTINUATIONS.values() for w in ws}))
OPENERS, CLOSERS = "([{", ")]}"
_PAIR = dict(zip(CLOSERS, OPENERS, strict=True))
_WORD = re.compile(r"[A-Za-z_;]+")


def language_of(path: str | None) -> Language:
    suffix = PurePath(path).suffix.lower() if path else ""
    return next((lang for lang, exts in _EXTENSIONS.items() if suffix in exts), Language.GENERIC)


def indent_width(line: str) -> int:
    expanded = line.expandtabs(4)
    return len(expanded) - len(expanded.lstrip(" "))


def continues_statement(line: str, language: Language) -> bool | None:
    """Does this line (complete, or partial at the end of the text) continue the statement above
    it? None while a partial line could still become either (`el` may grow into `else:`)."""
    body = line.strip()
    if body[:1] in CLOSERS:
        return True
    match = _WORD.match(body)
    word = match.group() if match else ""
    if not word:
        return False
    words = _CONTINUATIONS[language]
    if line.endswith("\n") or len(word) < len(body):
        return word in words
    return None if any(w.startswith(word) for w in words) else False


@dataclass
class LexState:
    """Where a scan stands: inside a string or comment (the text that closes it), the open
    brackets, and how many of them were open before the text being watched (the floor)."""

    inside: str = ""  # "" in code; "\n" in a line comment
    stack: list[str] = field(default_factory=list)
    floor: int = 0

    def copy(self) -> LexState:
        return replace(self, stack=list(self.stack))


def _starts(language: Language) -> dict[str, str]:
    """Opening text -> closing text of strings and comments, longest first."""
    strings = {'"""': '"""', "'''": "'''"} if language in (Language.PYTHON, Language.GENERIC) else {}
    strings |= {'"': '"', "'": "'"}
    if language == Language.C_LIKE:
        return {"//": "\n", "/*": "*/", "`": "`", **strings}
    return {"#": "\n", **strings}


class Lexer:
    """Scans text for brackets outside strings and comments (escapes honoured in strings).

    Jumps from one character that matters to the next with regular expressions: a file of
    16 MiB is lexed at the cursor, and a character loop in Python took seconds per megabyte."""

    def __init__(self, language: Language, state: LexState | None = None):
        self.starts = _starts(language)
        self.state = state or LexState()
        # Alternation tries the starts in order, longest first (`"""` before `"`).
        self._code = re.compile("|".join(map(re.escape, self.starts)) + r"|[()\[\]{}]")
        self._closing: dict[str, re.Pattern[str]] = {}

    def _closer(self, inside: str) -> re.Pattern[str]:
        """What ends a string or comment: its closing text, or first an escape that hides one."""
        if inside not in self._closing:
            escape = "" if inside in ("\n", "*/") else r"\\[\s\S]?|"
            self._closing[inside] = re.compile(escape + re.escape(inside))
        return self._closing[inside]

    def feed(self, text: str, base: int = 0) -> int | None:
        """Scan text; return the position (plus base) of the first closing bracket that closes
        one opened before the floor, or None."""
        st, i = self.state, 0
        while True:
            if st.inside:
                found = self._closer(st.inside).search(text, i)
                if found is None:
                    return None
                if not found.group().startswith("\\"):
                    # The newline that ends a line comment is code itself.
                    i = found.start() if st.inside == "\n" else found.end()
                    st.inside = ""
                else:
                    i = found.end()
                continue
            found = self._code.search(text, i)
            if found is None:
                return None
            token, i = found.group(), found.end()
            if token in self.starts:
                st.inside = self.starts[token]
            elif token in OPENERS:
                st.stack.append(token)
            elif st.stack and st.stack[-1] == _PAIR[token]:
                st.stack.pop()
                if len(st.stack) < st.floor:
                    st.floor = len(st.stack)
                    return base + found.start()


def state_at_cursor(prefix: str, language: Language) -> LexState:
    """The lexer's state at the cursor: the brackets open there (all below the floor), and
    whether the cursor sits in a string or comment."""
    return _scan_prefix(prefix, language)[0]


def _scan_prefix(prefix: str, language: Language) -> tuple[LexState, int]:
    """The state at the cursor, and the indentation of the line where the cursor's statement
    starts (`def f(a,` / `      b):` is one statement, at the indentation of `def`)."""
    lexer, statement, starts_statement = Lexer(language), 0, True
    lines = prefix.split("\n")
    for i, line in enumerate(lines):
        if starts_statement and line.strip():
            statement = indent_width(line)
        lexer.feed(line + "\n" if i < len(lines) - 1 else line)
        st = lexer.state
        starts_statement = not st.stack and not st.inside and not line.rstrip("\r").endswith("\\")
    lexer.state.floor = len(lexer.state.stack)
    return lexer.state, statement


def cursor_block(prefix: str, suffix: str, language: Language) -> BlockRules:
    """Block rules for a completion at the cursor (indentation and brackets). A cursor that ends
    a line opening a block (`def add(a, b):|` in Python) makes that block's body the whole
    block: it ends where the indentation comes back to the opener's. (A `{` needs no such
    rule: the bracket opened before the cursor ends the block when it closes.)"""
    state, statement = _scan_prefix(prefix, language)
    line_prefix = prefix.rsplit("\n", 1)[-1]
    opens = (language in (Language.PYTHON, Language.GENERIC) and not state.stack and not state.inside
             and line_prefix.rstrip().endswith(":") and not suffix.split("\n", 1)[0].strip())
    return BlockRules(language, state, line_prefix, suffix, indentation=True, opener=statement if opens else None)


# A top-level definition's first line, in the languages cg knows (decorators count: they start one).
_DEFINITION = re.compile(r"(?:@|(?:async\s+)?def\b|class\b|function\b|fn\b|func\b|pub\b|public\b|private\b|"
                         r"protected\b|static\b|export\b|const\b|let\b|var\b|fun\b|struct\b|impl\b|interface\b|"
                         r"enum\b|type\b|template\b|void\b|int\b|char\b|bool\b|double\b|float\b|long\b|auto\b)")


@dataclass(frozen=True)
class BlockRules:
    language: Language = Language.GENERIC
    cursor: LexState | None = None  # brackets open at the cursor: closing one ends the block
    line_prefix: str = ""  # the cursor's line up to the cursor
    suffix: str = ""
    indentation: bool = False  # end at the first line below the block's indentation
    opener: int | None = None  # the cursor ends a line opening a block, indented this much: its body is the block
    repetition: bool = False  # end where an earlier block of two lines starts again
    one_definition: bool = False  # end after the first complete top-level definition


@dataclass
class Verdict:
    cut: int | None = None  # the text ends here
    reason: str = ""
    hold: int | None = None  # text from here may still be cut: do not show it yet


class BlockWatcher:
    """Watches a completion grow and says where its block ends. Complete lines are examined once;
    the partial last line again on each call, and held while it could still end the block."""

    def __init__(self, rules: BlockRules):
        self.rules = rules
        self.lexer = Lexer(rules.language, rules.cursor.copy() if rules.cursor else LexState())
        self.processed = 0  # offset past the last complete line examined
        self.lines: list[tuple[int, str]] = []  # (start, text) of complete lines
        self.level: int | None = indent_width(rules.line_prefix) if rules.line_prefix.strip() else None
        if rules.opener is not None:
            self.level = rules.opener + 1  # the body: any line indented deeper than its opener
        self.pairs: dict[tuple[str, str], int] = {}  # two consecutive lines -> index of the first
        self.phase = 0  # one_definition: 0 before the definition, 1 in its header, 2 in its body
        self.verdict = Verdict()

    def check(self, text: str) -> Verdict:
        if self.verdict.cut is not None:
            return self.verdict
        while (end := text.find("\n", self.processed)) >= 0:
            start, self.processed = self.processed, end + 1
            cut = self._line(text[start:end + 1], start, partial=False)
            if cut is not None:
                self.verdict = Verdict(cut.cut, cut.reason)
                return self.verdict
        start = self.processed
        saved = self.lexer.state.copy()
        verdict = self._line(text[start:], start, partial=True) or Verdict()
        self.lexer.state = saved  # the partial line is examined again when it grows
        if verdict.cut is None and verdict.hold is None:
            verdict.hold = self._repeat_hold(text[start:], start)
        return verdict

    def _line(self, line: str, start: int, *, partial: bool) -> Verdict | None:
        rules, state = self.rules, self.lexer.state
        # Lines inside the completion's own ( or [ continue an expression; a { opens a block in
        # brace languages, whose lines are judged as any other.
        quoted, own_depth = bool(state.inside), sum(b in "([" for b in state.stack[state.floor:])
        closer = self.lexer.feed(line, start)
        if closer is not None and rules.cursor is not None:
            # It closes a bracket opened before the cursor: the block is done. Before the bracket
            # when the suffix brings it (the completion typed the suffix again), after it when not.
            if rules.suffix.lstrip()[:1] == line[closer - start]:
                return Verdict(closer, "suffix_overlap")
            return Verdict(closer + 1, "end_of_block")
        verdict = None
        if line.strip() and not quoted and own_depth <= 0:
            verdict = self._indentation(line, start) or self._definition(line, start)
        if not partial:
            self.lines.append((start, line[:-1]))
            verdict = verdict or self._repetition()
        return verdict

    def _ending(self, line: str, start: int) -> Verdict | None:
        """A line that may end the block: it does unless it continues the statement above."""
        continues = continues_statement(line, self.rules.language)
        if continues is None:
            return Verdict(hold=start)
        return None if continues else Verdict(start, "end_of_block")

    def _indentation(self, line: str, start: int) -> Verdict | None:
        if not self.rules.indentation:
            return None
        first = start == 0
        if self.level is None:  # the first line with text sets the block's level
            self.level = indent_width((self.rules.line_prefix if first else "") + line)
            return None
        if (first and self.rules.line_prefix) or self.level == 0 or indent_width(line) >= self.level:
            return None
        return self._ending(line, start)

    def _definition(self, line: str, start: int) -> Verdict | None:
        if not self.rules.one_definition:
            return None
        top = indent_width(line) == 0
        if self.phase == 0 and top and _DEFINITION.match(line):
            self.phase = 1
        elif self.phase == 1 and not top:
            self.phase = 2
        elif self.phase == 2 and top:
            return self._ending(line, start)
        return None

    def _repetition(self) -> Verdict | None:
        if not self.rules.repetition or len(self.lines) < 2:
            return None
        (a_start, a), (_, b) = self.lines[-2], self.lines[-1]
        if not (a.strip() and b.strip() and re.search(r"\w", a + b)):
            return None
        index = len(self.lines) - 2
        first = self.pairs.setdefault((a, b), index)
        return Verdict(a_start, "repetition") if first + 1 < index else None

    def _repeat_hold(self, partial: str, partial_start: int) -> int | None:
        """Text that may be the start of a repeated block is not shown yet: the last complete
        line when it equals an earlier line that had a line after it, and the partial line while
        it could still become such a line."""
        if not self.rules.repetition or len(self.lines) < 2:
            return None
        earlier = [text for _, text in self.lines[:-1]]
        start, last = self.lines[-1]
        if last.strip() and last in earlier[:-1]:
            return start
        if partial and any(text.startswith(partial) for text in earlier):
            return partial_start
        return None
