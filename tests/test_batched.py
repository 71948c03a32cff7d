"""Several prompts decoded together (LocalEngine.generate_many, cg/engine/local/batched.py) on
real llama.cpp: one llama_decode per step for every unfinished job, cells shared where prompts
share a prefix, cancellation between steps, waves when the jobs do not fit, and the text
against one-at-a-time generate()."""

from __future__ import annotations

import pytest

from cg.engine.local import engine as local
from cg.engine.local import reuse
from cg.engine.local.batched import Job, waves
from cg.engine.protocol import Sampling, Timings

from .helpers import NO_STOPS_BIAS


def _text(n: int, tag: str = "") -> str:
    return "".join(f"def f{tag}{i}(x):\n    return x * {i} + {i * 7 % 13}\n\n" for i in range(n))


@pytest.fixture(scope="module")
def tiny(tiny_gguf):
    eng = local.load(tiny_gguf, n_ctx=4096, n_threads=2)
    yield eng
    eng.llm.close()


def _prompts(eng, n: int, shared_lines: int = 30) -> list[list[int]]:
    """n FIM-like prompts that share their first lines, then differ."""
    head = [eng.info.bos, *eng.tokenize_text(_text(shared_lines))]
    return [[*head, *eng.tokenize_text(f"# target {k}\n" + _text(3 + k, tag=f"t{k}_"))] for k in range(n)]


def _single(eng, prompt, n: int, **kw) -> list[int]:
    pieces = eng.generate(prompt, max_tokens=n, sampling=Sampling(), logit_bias=kw.get("bias", NO_STOPS_BIAS),
                          logits_processor=None, timings=Timings(), on_prompt=None, exact=True,
                          cancel=kw.get("cancel"))
    return [p.ids[0] for p in pieces]


def _many(eng, jobs, **kw) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {i: [] for i in range(len(jobs))}
    for i, piece in eng.generate_many(jobs, **kw):
        out[i].extend(piece.ids)
    return out


def _counting_steps(eng, monkeypatch) -> list[int]:
    """The size of every llama_decode step generate_many makes (the real step runs)."""
    sizes: list[int] = []
    real = eng.llm.step

    def step(moves):
        sizes.append(len(moves))
        return real(moves)

    monkeypatch.setattr(eng.llm, "step", step)
    return sizes


def test_one_decode_per_step_for_every_unfinished_job(tiny, monkeypatch):
    prompts = _prompts(tiny, 3)
    jobs = [Job(p, n, logit_bias=NO_STOPS_BIAS) for p, n in zip(prompts, (5, 3, 8), strict=True)]
    sizes = _counting_steps(tiny, monkeypatch)
    got = _many(tiny, jobs)
    assert [len(got[i]) for i in range(3)] == [5, 3, 8]
    assert sizes == [3, 3, 2, 2, 1, 1, 1]  # the first tokens come from each prompt's own logits


def test_jobs_share_the_cells_of_a_common_prefix(tiny):
    prompts = _prompts(tiny, 4)
    jobs = [Job(p, 4, logit_bias=NO_STOPS_BIAS) for p in prompts]
    tiny.kv.clear()
    lib, ctx = tiny.llm.lib, tiny.llm
    sizes = []
    for i, _piece in tiny.generate_many(jobs):
        if i == 3 and not sizes:  # every prompt is in: the cells of all of them
            sizes.append(int(lib.llama_state_seq_get_size(ctx.ctx, -1)))
    shared = reuse.aligned(reuse.common_prefix(prompts[0], prompts[1]), len(prompts[1]), 128)
    assert shared >= 256
    assert all(j.timings.cached_tokens == shared and j.timings.reuse == "prefix" for j in jobs[1:])
    assert all(j.timings.evaluated_tokens == len(j.prompt) - shared for j in jobs[1:])
    # One copy of the shared cells: the whole state is about the cells of the distinct tokens.
    tiny.kv.clear()
    row = ctx.evaluate(tiny.kv.main, prompts[0])
    assert row >= 0
    one = int(lib.llama_state_seq_get_size(ctx.ctx, -1))
    distinct = len(prompts[0]) + sum(len(p) - shared for p in prompts[1:])
    duplicated = sum(len(p) for p in prompts)
    per_cell = one / len(prompts[0])
    assert abs(sizes[0] - distinct * per_cell) < abs(sizes[0] - duplicated * per_cell)
    tiny.kv.clear()


def test_the_main_sequence_keeps_the_first_prompt_and_the_others_are_freed(tiny):
    prompts = _prompts(tiny, 3)
    tiny.kv.clear()
    _many(tiny, [Job(p, 3, logit_bias=NO_STOPS_BIAS) for p in prompts])
    assert tiny.kv.main.tokens == prompts[0] and tiny.kv.main.span() == (0, len(prompts[0]) - 1)
    assert all(s.span() == (-1, -1) for s in tiny.llm.sequences if s.id != 0)
    timings = Timings()
    list(tiny.generate(prompts[0], max_tokens=1, sampling=Sampling(), logit_bias=None, logits_processor=None,
                       timings=timings, on_prompt=None, exact=True))
    assert timings.cached_tokens == (len(prompts[0]) - 1) // 128 * 128


def test_a_cancelled_job_ends_at_once_and_the_others_go_on(tiny):
    prompts = _prompts(tiny, 3)
    seen = {"n": 0}

    def cancel() -> bool:
        return seen["n"] >= 2

    jobs = [Job(prompts[0], 6, logit_bias=NO_STOPS_BIAS), Job(prompts[1], 6, logit_bias=NO_STOPS_BIAS, cancel=cancel),
            Job(prompts[2], 6, logit_bias=NO_STOPS_BIAS)]
    out: dict[int, list[int]] = {0: [], 1: [], 2: []}
    for i, piece in tiny.generate_many(jobs):
        out[i].extend(piece.ids)
        if i == 1:
            seen["n"] += 1
    assert [len(out[i]) for i in range(3)] == [6, 2, 6]


def test_a_stop_id_ends_a_job_with_its_piece(tiny):
    prompts = _prompts(tiny, 2)
    forced = [prompts[1][5], 70]  # a token, then <|file_separator|>
    step = {"n": 0}

    def force(_ids, logits):
        if step["n"] < len(forced):
            logits[forced[step["n"]]] += 1e4
        step["n"] += 1
        return logits

    jobs = [Job(prompts[0], 4, logit_bias=NO_STOPS_BIAS), Job(prompts[1], 4, logits_processor=force)]
    out = _many(tiny, jobs)
    assert out[1] == forced and len(out[0]) == 4


def test_cancel_in_generate_keeps_the_cells_for_the_next_prompt(tiny):
    prompt = [tiny.info.bos, *tiny.tokenize_text(_text(60))]
    assert len(prompt) > 600
    tiny.kv.clear()
    calls = {"n": 0}

    def cancel() -> bool:  # true after three prompt chunks
        calls["n"] += 1
        return calls["n"] > 3

    assert _single(tiny, prompt, 5, cancel=cancel) == []
    held = len(tiny.kv.main.tokens)
    assert held == 3 * 128 and tiny.kv.main.tokens == prompt[:held]
    timings = Timings()
    list(tiny.generate(prompt, max_tokens=2, sampling=Sampling(), logit_bias=None, logits_processor=None,
                       timings=timings, on_prompt=None, exact=True))
    assert timings.cached_tokens == held and timings.reuse == "prefix"
    # Cancelled while generating: the prompt stays, the generated tokens go.
    produced = {"n": 0}

    def after_two() -> bool:
        return produced["n"] >= 2

    tokens = []
    for piece in tiny.generate(prompt, max_tokens=9, sampling=Sampling(), logit_bias=NO_STOPS_BIAS,
                               logits_processor=None, timings=Timings(), on_prompt=None, exact=True, cancel=after_two):
        tokens.append(piece.ids[0])
        produced["n"] += 1
    assert len(tokens) == 2 and tiny.kv.main.tokens == prompt


def test_jobs_beyond_the_sequences_or_the_cells_run_in_waves(tiny):
    prompts = _prompts(tiny, 10, shared_lines=8)
    jobs = [Job(p, 2, logit_bias=NO_STOPS_BIAS) for p in prompts]
    assert [len(w) for w in waves(tiny, jobs)] == [7, 3]  # 8 sequences, the parking one kept free
    big = [Job(p, 2000) for p in prompts[:3]]
    assert len(waves(tiny, big)) == 3  # 4096 cells: one at a time
    out = _many(tiny, jobs)
    assert all(len(out[i]) == 2 for i in range(10))
    for i in (0, 7, 9):  # each wave's first job is prepared as generate() prepares it: the same first token
        assert out[i][0] == _single(tiny, prompts[i], 1)[0]
