"""TextCutter, fences and FIM budget helpers: pure functions, no model."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cg.output.cuts import CutRules, FenceCut, PrefixMatcher, TextCutter, drop_trailing_blank_lines, strip_fence
from cg.prompt import fim


def run(pieces, rules=None):
    rules = rules or CutRules()
    cutter = TextCutter(rules)
    out = "".join(cutter.feed(p) for p in pieces)
    if not cutter.done:
        pass
    return out + cutter.finish(), cutter.reason


def test_trailing_blank_lines_dropped():
    assert drop_trailing_blank_lines("x = 1\n\n  \n") == "x = 1"
    assert drop_trailing_blank_lines("  \n\n") == ""
    assert drop_trailing_blank_lines("a  ") == "a  "


def test_suffix_overlap_cut_at_first_nonblank_suffix_line():
    rules = CutRules(suffix="\n\nprint(add(1, 2))\n")
    assert run(["    return a + b\n", "\nprint(add(1, 2))\n", "more"], rules) == ("    return a + b", "suffix_overlap")


def test_overlap_on_last_partial_line_at_finish():
    # The suffix starts a line: the completion keeps the break that ends its own last line.
    assert run(["x = 1\n", "return x"], CutRules(suffix="return x")) == ("x = 1\n", "suffix_overlap")
    assert run(["x = 1\n", "return x"], CutRules(suffix="\nreturn x")) == ("x = 1", "suffix_overlap")


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(st.text(st.sampled_from("ab (): "), min_size=1, max_size=6).filter(str.strip),
                      min_size=1, max_size=4),
       blank=st.sampled_from(["", "\n", "\n    \n"]), splits=st.lists(st.integers(1, 40), max_size=6))
def test_whole_line_completions_join_the_suffix_as_lines(lines, blank, splits):
    """Cursor at a line start, suffix starting a line: prefix + completion + suffix keeps every
    generated line whole, however the text arrives in pieces."""
    generated = "".join(line + "\n" for line in lines) + blank
    suffix = "tail()\n"
    cuts = sorted({min(s, len(generated)) for s in splits} - {0, len(generated)})
    pieces = [generated[i:j] for i, j in zip([0, *cuts], [*cuts, len(generated)], strict=True)]
    text, _ = run(pieces, CutRules(suffix=suffix))
    assert (text + suffix).splitlines() == [line.rstrip() if not line.strip() else line for line in lines] + ["tail()"]


def test_sentinel_text_cut_even_split_across_pieces():
    rules = CutRules(stop_texts=("<|file_separator|>",))
    assert run(["abc<|file", "_separator|>tail"], rules) == ("abc", "stop_token")
    # A piece that only looks like the start of a sentinel is released at the end.
    assert run(["abc<|fi"], rules) == ("abc<|fi", None)


def test_streamed_text_equals_final_text_for_any_split():
    text = "    x = 1\n\n    y = x\n    return y\n\n\nprint(f())\n<|fim_prefix|>junk"
    rules = CutRules(suffix="\nprint(f())\n", stop_texts=("<|fim_prefix|>",))
    expected = run([text], rules)
    rng = random.Random(0)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(text)), 8))
        pieces = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        cutter = TextCutter(rules)
        streamed = [cutter.feed(p) for p in pieces]
        total = "".join(streamed) + cutter.finish()
        assert (total, cutter.reason) == expected
    assert expected == ("    x = 1\n\n    y = x\n    return y", "suffix_overlap")


@pytest.mark.parametrize("line_prefix, pieces, suffix, expected", [
    ("print(", ["len(", "x))"], ")\n", ("len(x)", "suffix_overlap")),       # one ")" too many
    ("print(", ["len(x)"], ")\n", ("len(x)", None)),                      # that ")" closes len(
    ("if x > 0", [" and y:"], ":\n    pass\n", (" and y", "suffix_overlap")),
    ("def f(a", [", b):\n", "    return a\n"], "):\n    pass\n", (", b", "suffix_overlap")),
    ("x = ", ["foo()"], "foo()\n", ("", "suffix_overlap")),                # only the rest, again
    ("x = [", ["1, 2]"], "]\ny = 2\n", ("1, 2", "suffix_overlap")),
    ("x = [", ["1, 2"], "]\ny = 2\n", ("1, 2", None)),
    ("    ", ["return 1"], "\nfoo()\n", ("return 1", None)),               # cursor at a line's end: no rest
    ("    ", ["x = foo()"], "foo()\n", ("x = foo()", None)),               # line start: the rule is off
    ("x = foo(", ["\n    a,\n    b)"], ")\n", ("\n    a,\n    b", "suffix_overlap")),
    ("x = foo(", ["\n    bar(a),\n    baz(b)"], ")\n", ("\n    bar(a),\n    baz(b)", None)),
    # Cursor at a line start, whole lines filled: the next line's ")" is not on this line, and the
    # completion keeps the line break that separates them.
    ("", ["    foo(a)\n"], "    )\n", ("    foo(a)\n", None)),
])
def test_rest_of_line_repeat(line_prefix, pieces, suffix, expected):
    rules = CutRules(suffix=suffix, line_prefix=line_prefix)
    assert run(pieces, rules) == expected
    # Streaming never shows what the cut takes back.
    cutter = TextCutter(rules)
    shown = "".join(cutter.feed(ch) for p in pieces for ch in p)
    assert expected[0].startswith(shown)


def test_single_line_skips_leading_newline():
    assert run(["\n    return 1\n    pass\n"], CutRules(single_line=True)) == ("\n    return 1", "max_lines")


def test_whitespace_only_result_is_empty():
    assert run(["   \n\t\n"]) == ("", None)


@pytest.mark.parametrize("answer,body", [
    ("```python\ndef f():\n    pass\n```", "def f():\n    pass"),
    ("\n```\nx = 1\n```\n", "x = 1"),
    ("Here:\n```\nx\n```", "Here:\n```\nx\n```"),  # does not start with a fence: kept as written
    # The block is the answer: what follows its closing fence is not code.
    ("```a\nx\n```\ntext\n```b\ny\n```", "x"),
    ("```python\nprint(1)\n```\n\nThis prints 1.\n", "print(1)"),
    ("```\n```\n", ""),
    ("```python\nx = 1\n  ``", "x = 1\n  ``"),  # no closing fence: the body as it is
    ("```python extra words\nx\n```", "```python extra words\nx\n```"),  # not an opening fence line
])
def test_strip_fence_and_fence_cut_agree(answer, body):
    assert strip_fence(answer) == body
    fence = FenceCut()
    out = "".join(fence.feed(c) for c in answer) + fence.finish()
    assert out == body


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(st.sampled_from(["```", "```python", "  ```", "x = 1", "  `", "", "text", "``", "``` "]),
                      max_size=7),
       end=st.sampled_from(["", "\n"]), splits=st.lists(st.integers(1, 60), max_size=8))
def test_fence_cut_streams_what_the_whole_answer_gives(lines, end, splits):
    answer = "\n".join(lines) + end
    cuts = sorted({min(s, len(answer)) for s in splits} - {0, len(answer)})
    fence, shown = FenceCut(), ""
    for a, b in zip([0, *cuts], [*cuts, len(answer)], strict=True):
        shown += fence.feed(answer[a:b])
        assert strip_fence(answer).startswith(shown)
    assert shown + fence.finish() == strip_fence(answer)


def test_a_fenced_answer_streams_its_body_and_ends_at_the_closing_fence():
    cutter = TextCutter(CutRules(fence=True))
    shown = cutter.feed("```python\n") + cutter.feed("def f():\n") + cutter.feed("    return 1\n")
    assert shown == "def f():\n    return 1" and not cutter.done  # out before the block is over
    shown += cutter.feed("``")
    assert shown == "def f():\n    return 1" and not cutter.done  # may be the closing fence: held
    shown += cutter.feed("`\nThis function returns 1.")
    assert cutter.done  # decoding stops here
    assert (shown + cutter.finish(), cutter.reason) == ("def f():\n    return 1", "end_of_block")


@pytest.mark.parametrize("pieces, expected", [
    (["x = 1"], ("x = 1", "time_limit")),  # one line in progress, still held by the fence: kept whole
    (["```python\n", "a = 1\n", "``"], ("a = 1", "time_limit")),  # a partial last line goes, as always
    (["```python\n", "a = 1\n", "```"], ("a = 1", "end_of_block")),
])
def test_the_time_limit_keeps_what_the_fence_held(pieces, expected):
    cutter = TextCutter(CutRules(fence=True))
    shown = "".join(cutter.feed(p) for p in pieces)
    cutter.end_for_time()  # the server went quiet after the time was up
    assert (shown + cutter.finish(), cutter.reason) == expected


def _longest_prefix_ending(text: str, pattern: str) -> int:
    body = text.rstrip()
    return next((k for k in range(len(pattern), 0, -1) if body.endswith(pattern[:k])), 0)


@settings(max_examples=400, deadline=None)
@given(pattern=st.text(st.sampled_from("ab a"), min_size=1, max_size=12).map(str.strip).filter(bool),
       pieces=st.lists(st.text(st.sampled_from("ab \t\n"), max_size=8), max_size=8))
def test_prefix_matcher_equals_the_brute_force(pattern, pieces):
    matcher, text = PrefixMatcher(pattern), ""
    for piece in pieces:
        matcher.feed(piece)
        text += piece
        k = _longest_prefix_ending(text, pattern)
        assert (matcher.body_state, matcher.body_end) == (k, len(text.rstrip()))


@pytest.mark.parametrize("rest, generated", [
    ("a" * 400_000, "a" * 3_000),  # every character extends the match
    ("ab" * 200_000 + "c", "ab" * 1_500 + "abc"),
    ("aab" * 100_000, ("aa" + "aab" * 7) * 80),  # matches that keep falling back
    ("x" * 400_000, "y" * 3_000),
])
def test_the_rest_of_line_hold_is_linear_in_the_text_not_the_line(rest, generated):
    """A cursor inside a very long line: the hold for "may still repeat the rest of the line"
    looks at each generated character a bounded number of times, whatever the rest's length
    (it tried every prefix of the rest for every piece: 35 s for a 1 MB rest)."""
    cutter = TextCutter(CutRules(suffix=rest + "\n", line_prefix="x = "))
    shown = "".join(cutter.feed(generated[i:i + 3]) for i in range(0, len(generated), 3))
    matcher = cutter._rest_match
    assert matcher is not None and matcher.steps <= 4 * len(generated)
    assert len(matcher.fail) <= len(generated)  # the table grew only as far as a match reached
    k = _longest_prefix_ending(generated, rest[: len(generated) + 1])
    assert shown == generated[: len(generated) - k]


def test_trim_to_budget_keeps_nearest_tokens():
    pre, suf = list(range(100)), list(range(1000, 1100))
    t = fim.trim_to_budget(pre, suf, 80)
    assert len(t.prefix) + len(t.suffix) == 80
    assert t.prefix == pre[-60:] and t.suffix == suf[:20]
    assert (t.dropped_prefix, t.dropped_suffix) == (40, 80)
    short = fim.trim_to_budget(list(range(10)), suf, 80)
    assert short.prefix == list(range(10)) and short.suffix == suf[:70]


def test_a_very_long_stop_text_costs_no_more_than_the_text():
    """Each piece checked every prefix of a stop text: a 1 MB stop held a server's worker 35 s
    for 4 tokens. A hang guard only: the run takes well under a second."""
    import subprocess
    import sys

    code = ("from cg.output.cuts import CutRules, TextCutter\n"
            "c = TextCutter(CutRules(stop_texts=('x' * 1_000_000,)))\n"
            "out = ''.join(c.feed(p) for p in ['ab', 'x', 'cd\\n', 'xx'] * 5) + c.finish()\n"
            "print(repr(out))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == repr("abxcd\nxx" * 5)
