"""Block-aware stopping over streamed pieces: each rule and language, and streaming never shows
what a later piece takes back."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cg.output.blocks import (
    BlockRules,
    Language,
    Lexer,
    LexState,
    _starts,
    continues_statement,
    cursor_block,
    language_of,
)
from cg.output.cuts import CutRules, TextCutter


def rules(prefix: str, suffix: str = "", language: Language = Language.PYTHON) -> CutRules:
    block = cursor_block(prefix, suffix, language)
    return CutRules(suffix=suffix, line_prefix=block.line_prefix, block=block)


def run(text: str, cut_rules: CutRules, seed: int = 0) -> tuple[str, str | None]:
    """Feed text in random pieces; check the stream against the joined result; return it."""
    whole = TextCutter(cut_rules)
    joined = whole.feed(text)
    joined += whole.finish()
    rng = random.Random(seed)
    for _ in range(30):
        cutter = TextCutter(cut_rules)
        cuts = sorted(rng.sample(range(1, max(2, len(text))), min(6, max(0, len(text) - 1))))
        shown = ""
        for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True):
            shown += cutter.feed(text[a:b])
            assert joined.startswith(shown), (shown, joined)
        assert shown + cutter.finish() == joined
    return joined, whole.reason


CASES = [
    # Python: the body's level is set by its first line; the next line below it ends the block.
    ("def add(a, b):\n", "\n", "    return a + b\n\ndef sub(a, b):\n    return a - b\n", Language.PYTHON,
     ("    return a + b", "end_of_block")),
    # else / elif / except / finally continue the statement at a lower indentation.
    ("def f(x):\n", "", "    if x:\n        y()\n    else:\n        z()\n    try:\n        w()\n    except E:\n"
     "        pass\n    finally:\n        q()\nfoo()\n", Language.PYTHON,
     ("    if x:\n        y()\n    else:\n        z()\n    try:\n        w()\n    except E:\n        pass\n"
      "    finally:\n        q()", "end_of_block")),
    # The cursor inside indented text: the cursor line's indentation is the level.
    ("def f():\n    x = ", "", "compute()\n    y = 2\nz = 3\n", Language.PYTHON,
     ("compute()\n    y = 2", "end_of_block")),
    # A bracket opened before the cursor: closed by the completion, ends it right after...
    ("result = foo(\n", "", "    a,\n    b,\n)\nbar()\n", Language.PYTHON, ("    a,\n    b,\n)", "end_of_block")),
    # ... or right before, when the suffix brings the bracket (today's suffix-overlap behaviour).
    ("print(", ")\n", "len(x)) + 1\n", Language.PYTHON, ("len(x)", "suffix_overlap")),
    # Brackets in strings and comments do not count.
    ("print(", "", "'(' + \")\"  # )\n    , 1) + 2\n", Language.PYTHON, ("'(' + \")\"  # )\n    , 1)", "end_of_block")),
    # C-like: the function's closing brace, supplied by the suffix or not.
    ("function add(a, b) {\n", "}\n", "  return a + b;\n}\n\nfunction sub() {}\n", Language.C_LIKE,
     ("  return a + b;\n", "suffix_overlap")),
    ("function add(a, b) {\n", "", "  return a + b;\n}\n\nfunction sub() {}\n", Language.C_LIKE,
     ("  return a + b;\n}", "end_of_block")),
    ("void f(int x) {\n", "", "  if (x) {\n    a(\"}\");\n  } else {\n    b(); // }\n  }\n}\nint g;\n", Language.C_LIKE,
     ("  if (x) {\n    a(\"}\");\n  } else {\n    b(); // }\n  }\n}", "end_of_block")),
    ("const f = () => {\n", "", "  /* } */ return `${x}}`;\n};\nconst g = 1;\n", Language.C_LIKE,
     ("  /* } */ return `${x}}`;\n}", "end_of_block")),
    # Shell: else and fi continue an if; the next command at the if's level ends the body.
    ("if [ -f x ]; then\n", "", "  echo yes\nelse\n  echo no\nfi\necho done\n", Language.SHELL,
     ("  echo yes\nelse\n  echo no\nfi", "end_of_block")),
    ("for f in *.py; do\n", "", "  wc -l \"$f\"\ndone\nls\n", Language.SHELL, ("  wc -l \"$f\"\ndone", "end_of_block")),
    # The cursor ends a line that opens a block: the block is its body, ended where the
    # indentation comes back to the opener's (it ran on into `def remove`, `def multiply`...).
    ("def add(a, b):", "\n", "\n    return a + b\n\ndef remove(a, b):\n    return a - b\n", Language.PYTHON,
     ("\n    return a + b", "end_of_block")),
    ("def add(a, b):", "\n", "\n    return a + b\n\ndef remove(a, b):\n", Language.GENERIC,
     ("\n    return a + b", "end_of_block")),
    ("class Calc:\n    def add(self, a, b):", "\n", "\n        return a + b\n\n    def add(self, a, b):\n",
     Language.PYTHON, ("\n        return a + b", "end_of_block")),
    ("def f(x):\n    if x:", "\n    return 0\n", "\n        y()\n    else:\n        z()\n    return 1\n",
     Language.PYTHON,
     ("\n        y()\n    else:\n        z()", "end_of_block")),
    ("def f(a,\n      b):", "\n", "\n    return a\ndef g(): pass\n", Language.PYTHON,  # the statement's indentation
     ("\n    return a", "end_of_block")),
    ("def f(): ", "\n", "return 1\ndef g(): pass\n", Language.PYTHON, ("return 1", "end_of_block")),
    # The same in brace languages: the brace opened before the cursor closes the block.
    ("function add(a, b) {", "\n", "\n  return a + b;\n}\nfunction remove() {}\n", Language.C_LIKE,
     ("\n  return a + b;\n}", "end_of_block")),
    # Not an opener: a colon in a comment, or text after the cursor on its line.
    ("x = 1  # note:", "\n", " fix\ny = 2\n", Language.PYTHON, (" fix\ny = 2", None)),
    ("if x:", " pass\n", " y\nz = 1\n", Language.PYTHON, (" y\nz = 1", None)),
    # A top-level cursor: nothing is below level 0, so indentation does not end it.
    ("", "", "x = 1\ny = 2\n", Language.PYTHON, ("x = 1\ny = 2", None)),
]


@pytest.mark.parametrize("prefix, suffix, text, language, expected", CASES)
def test_block_rules(prefix, suffix, text, language, expected):
    assert run(text, rules(prefix, suffix, language)) == expected


def test_a_line_that_may_still_continue_is_held_until_it_can_tell():
    cutter = TextCutter(rules("def f(x):\n    if x:\n"))
    shown = cutter.feed("        y()\n")
    shown += cutter.feed("    el")  # below the level: "el" may become "else:" (it continues) or not
    assert shown == "        y()"
    shown += cutter.feed("se:\n        z()\n")
    assert shown == "        y()\n    else:\n        z()"
    cutter = TextCutter(rules("def f(x):\n"))
    shown = cutter.feed("    return x\nel")  # below the level: held...
    assert shown == "    return x"
    shown += cutter.feed("apsed = 1\n")  # ... and it was not a continuation: the block ended
    assert (shown + cutter.finish(), cutter.reason) == ("    return x", "end_of_block")


def test_no_block_stop_keeps_everything():
    text = "    return a + b\n\ndef sub(a, b):\n    return a - b"
    assert run(text, CutRules(suffix="\n", line_prefix="")) == (text, None)


@pytest.mark.parametrize("line, language, expected", [
    ("else:", Language.PYTHON, True), ("elif x:", Language.PYTHON, True), ("except ValueError:", Language.PYTHON, True),
    ("finally:\n", Language.PYTHON, True), ("elsewhere = 1\n", Language.PYTHON, False), ("el", Language.PYTHON, None),
    ("} else {", Language.C_LIKE, True), ("catch (e) {", Language.C_LIKE, True), (")", Language.PYTHON, True),
    ("fi\n", Language.SHELL, True), ("done", Language.SHELL, None), ("esac\n", Language.SHELL, True),
    ("def g():\n", Language.PYTHON, False), ("@decorator\n", Language.PYTHON, False),
])
def test_continuations(line, language, expected):
    assert continues_statement(line, language) is expected


@pytest.mark.parametrize("path, language", [("a/b.py", Language.PYTHON), ("x.tsx", Language.C_LIKE),
                                            ("main.rs", Language.C_LIKE), ("run.sh", Language.SHELL),
                                            ("notes.txt", Language.GENERIC), (None, Language.GENERIC)])
def test_language_from_the_path(path, language):
    assert language_of(path) == language


def generate_rules(**kw) -> CutRules:
    return CutRules(block=BlockRules(repetition=True, **kw), strip_leading=kw.get("one_definition", False))


def test_repetition_of_a_two_line_block_ends_generation():
    assert run("a()\nb()\nc()\na()\nb()\nd()\n", generate_rules()) == ("a()\nb()\nc()", "repetition")
    assert run("p()\np()\np()\np()\np()\n", generate_rules()) == ("p()\np()", "repetition")
    assert run("}\n}\n}\n}\n", generate_rules()) == ("}\n}\n}\n}", None)  # no words: not a repeat


def test_one_definition_ends_after_the_first_top_level_one():
    text = "\n\ndef reverse(s):\n    return s[::-1]\n\nprint(reverse('x'))\nprint(reverse('y'))\n"
    assert run(text, generate_rules(one_definition=True)) == ("def reverse(s):\n    return s[::-1]", "end_of_block")
    fenced = "```python\n@cache\ndef f(n):\n    return n\n```\nThat is all.\n"
    assert run(fenced, generate_rules(one_definition=True)) == ("```python\n@cache\ndef f(n):\n    return n",
                                                                 "end_of_block")
    c_like = "int add(int a, int b) {\n    return a + b;\n}\nint main() {}\n"
    assert run(c_like, generate_rules(one_definition=True)) == ("int add(int a, int b) {\n    return a + b;\n}",
                                                                 "end_of_block")


@settings(max_examples=200, deadline=None)
@given(body=st.lists(st.sampled_from(["    x = 1", "    if y:", "        z()", "    else:", "", "    # (",
                                       "    s = ')'", "f(", ")", "def g():", "el"]), max_size=8),
       seed=st.integers(0, 1000))
def test_streaming_equals_the_joined_result(body, seed):
    run("\n".join(body) + "\n", rules("def f():\n", "\nnext()\n"), seed)


def _reference_lex(text: str, language: Language, state: LexState) -> int | None:
    """The lexer as a plain character loop (what cg's regular-expression lexer must equal)."""
    starts, i = _starts(language), 0
    while i < len(text):
        if state.inside:
            if text[i] == "\\" and state.inside not in ("\n", "*/"):
                i += 2
            elif text.startswith(state.inside, i):
                i += 0 if state.inside == "\n" else len(state.inside)
                state.inside = ""
            else:
                i += 1
            continue
        opener = next((o for o in starts if text.startswith(o, i)), None)
        if opener is not None:
            state.inside, i = starts[opener], i + len(opener)
            continue
        if text[i] in "([{":
            state.stack.append(text[i])
        elif text[i] in ")]}" and state.stack and state.stack[-1] == "([{"[")]}".index(text[i])]:
            state.stack.pop()
            if len(state.stack) < state.floor:
                state.floor = len(state.stack)
                return i
        i += 1
    return None


_LEX_PIECES = [*"()[]{}'\"`#/*\\\n x", '"""', "'''", "//", "/*", "*/"]


@settings(max_examples=400, deadline=None)
@given(text=st.lists(st.sampled_from(_LEX_PIECES), max_size=30).map("".join),
       language=st.sampled_from(list(Language)), floor=st.integers(0, 2),
       splits=st.lists(st.integers(1, 40), max_size=4))
def test_the_lexer_equals_a_character_loop(text, language, floor, splits):
    cuts = sorted({min(s, len(text)) for s in splits} - {0, len(text)})
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    fast, slow = Lexer(language, LexState(stack=["("] * floor, floor=floor)), LexState(stack=["("] * floor, floor=floor)
    for piece in pieces:
        assert fast.feed(piece) == _reference_lex(piece, language, slow)
        assert (fast.state.inside, fast.state.stack, fast.state.floor) == (slow.inside, slow.stack, slow.floor)
