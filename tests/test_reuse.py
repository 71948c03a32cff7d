"""Prompt reuse on token lists (reuse.py) and stable windows (fim.stable_window): pure functions,
properties over generated inputs."""

from __future__ import annotations

import itertools
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from cg.engine.local import reuse
from cg.prompt import fim


def _words(text: str) -> int:
    """A stand-in tokenizer count: one token per word and per line break."""
    return len(text.split()) + text.count("\n")


def _file(rng: random.Random, lines: int) -> list[str]:
    return [" ".join(f"w{rng.randrange(50)}" for _ in range(rng.randrange(1, 9))) + "\n" for _ in range(lines)]


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 10_000), st.integers(60, 400), st.integers(40, 400))
def test_the_window_stays_put_while_the_cursor_moves_within_a_stretch(seed, n_lines, budget):
    rng = random.Random(seed)
    lines = _file(rng, n_lines)
    text = "".join(lines)
    stretch = rng.randrange(0, (n_lines - 1) // fim.STRETCH + 1) * fim.STRETCH
    windows = set()
    for cursor in range(stretch, min(stretch + fim.STRETCH, n_lines)):
        at = sum(len(x) for x in lines[:cursor]) + rng.randrange(len(lines[cursor]))  # anywhere in the line
        prefix, suffix = text[:at], text[at:]
        kept_prefix, kept_suffix = fim.stable_window(prefix, suffix, budget, _words)
        assert prefix.endswith(kept_prefix) and suffix.startswith(kept_suffix)
        top = prefix.count("\n") - kept_prefix.count("\n")  # the first kept line
        bottom = prefix.count("\n") + kept_suffix.count("\n") + (not kept_suffix.endswith("\n"))
        assert top % fim.STRETCH == 0 and (bottom % fim.STRETCH == 0 or bottom >= n_lines)
        windows.add((top, bottom))
        whole_stretch = _words("".join(lines[stretch:stretch + fim.STRETCH]))
        if whole_stretch <= budget // 4:
            assert _words(kept_prefix) + _words(kept_suffix) <= budget + 2  # a split line counts its break twice
    assert len(windows) == 1


def test_the_window_uses_most_of_the_budget():
    rng = random.Random(3)
    lines = _file(rng, 2000)
    text = "".join(lines)
    at = sum(len(x) for x in lines[:1000])
    kept_prefix, kept_suffix = fim.stable_window(text[:at], text[at:], 2000, _words)
    used = _words(kept_prefix) + _words(kept_suffix)
    assert 2000 * 0.8 <= used <= 2000
    assert _words(kept_suffix) <= 2000 // 4 + _words("".join(lines[992:1008]))  # the prefix keeps most


def test_the_exact_plan_keeps_whole_batches():
    cached = list(range(1000))
    assert reuse.exact(cached, [*cached[:700], 5000, 5001], 128) == reuse.Plan(640, (), 702)
    assert reuse.exact(cached, cached, 128).prefix == 896  # never the last token
    assert reuse.exact([], [1, 2, 3], 128).prefix == 0


def _psm(prefix: list[int], suffix: list[int]) -> list[int]:
    return [2, 67, *prefix, 69, *suffix, 68]


def test_a_cursor_moved_down_reuses_everything_but_the_moved_lines():
    rng = random.Random(1)
    body = [rng.randrange(100, 200) for _ in range(2000)]
    old, new = _psm(body[:1500], body[1500:]), _psm(body[:1520], body[1520:])
    plan = reuse.splice(old, new, 128, fresh=32)
    assert plan.prefix == 1502 and len(plan.runs) == 1
    [run] = plan.runs
    assert run.shift == 0 and run.new == 1502 + 20 + 1 + 32  # the moved tokens, <|fim_suffix|>, the fresh ones
    assert plan.evaluated == 20 + 1 + 32 + 1  # ... and the last token
    assert plan.spans() == [(1502, run.new), (run.new + run.length, len(new) - 1)]


def test_a_line_inserted_above_shifts_the_rest():
    rng = random.Random(2)
    body = [rng.randrange(100, 200) for _ in range(1500)]
    old = _psm(body, [])
    new = _psm([*body[:300], 7, 7, 7, 7, 7, *body[300:]], [])
    plan = reuse.splice(old, new, 128, fresh=8)
    assert plan.prefix == 302 and [r.shift for r in plan.runs] == [5]
    assert plan.evaluated == 5 + 8 + 1  # the new line, the fresh tokens, the last token
    assert plan.spliced + plan.prefix + plan.evaluated == len(new)


def test_runs_are_in_order_and_never_overlap():
    rng = random.Random(4)
    for _ in range(50):
        cached = [rng.randrange(100, 130) for _ in range(rng.randrange(100, 800))]
        prompt = list(cached)
        for _ in range(rng.randrange(1, 6)):  # a few edits
            at = rng.randrange(len(prompt))
            prompt[at:at + rng.randrange(0, 20)] = [rng.randrange(100, 130) for _ in range(rng.randrange(0, 20))]
        plan = reuse.splice(cached, prompt, 128, fresh=4)
        ends_old, ends_new = plan.prefix, plan.prefix
        for run in plan.runs:
            assert run.old >= ends_old and run.new >= ends_new and run.length >= reuse.MIN_RUN
            assert cached[run.old:run.old + run.length] == prompt[run.new:run.new + run.length]
            ends_old, ends_new = run.old + run.length, run.new + run.length
        assert ends_new <= len(prompt) - 1 and cached[:plan.prefix] == prompt[:plan.prefix]
        spans = plan.spans()
        assert len(spans) == len(plan.runs) + 1 and spans[-1][1] == len(prompt) - 1


def test_a_splice_that_saves_little_is_not_taken():
    cached = list(range(300, 600))
    plan = reuse.splice(cached, [*cached[:-3], 1, 2, 3], 128)
    assert plan.runs == () and plan == reuse.exact(cached, [*cached[:-3], 1, 2, 3], 128)
    # Most of the prompt changed: a fresh state is worth more than a splice.
    mostly_new = [*cached[:10], *range(1000, 1200), *cached[210:260]]
    assert reuse.splice(cached, mostly_new, 128).runs == ()


def test_common_prefix():
    assert reuse.common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2
    assert reuse.common_prefix([], [1]) == 0 and reuse.common_prefix([1, 2], [1, 2]) == 2


def test_a_decoy_near_the_front_does_not_hide_the_true_matches():
    # Repetitive code: the new prompt's head repeats a stretch from late in the cached prompt.
    # Taking that match first (greedy, front to back) puts every true match behind it out of order.
    rng = random.Random(5)
    head, a, b = ([rng.randrange(100, 10_000) for _ in range(n)] for n in (60, 300, 300))
    cached = [*head, *a, *b]
    prompt = [*[rng.randrange(100, 10_000) for _ in range(40)], *b[:60], *a, *b, 7]
    runs = reuse.match_runs(cached, prompt, 0, min_length=48, cost=32)
    assert sum(r.length for r in runs) >= 600 - 1
    plan = reuse.splice(cached, prompt, 128, fresh=32)
    assert plan.evaluated <= 40 + 60 + 2 * 32 + 1


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 10_000))
def test_the_chain_reuses_at_least_as_much_as_any_one_run(seed):
    rng = random.Random(seed)
    pieces = [[rng.randrange(100, 120) for _ in range(rng.randrange(10, 120))] for _ in range(6)]
    cached = [t for p in pieces for t in p]
    order = rng.sample(range(6), 6)
    prompt = [t for k in order for t in pieces[k]]
    runs = reuse.match_runs(cached, prompt, 0, min_length=16)
    for earlier, later in itertools.pairwise(runs):
        assert later.old >= earlier.old + earlier.length and later.new >= earlier.new + earlier.length
    for run in runs:
        assert cached[run.old:run.old + run.length] == prompt[run.new:run.new + run.length]
    longest = max((len(p) for p in pieces if len(p) >= 16), default=0)
    assert sum(r.length for r in runs) >= longest
