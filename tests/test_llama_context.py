"""cg's own llama.cpp context (cg/engine/local/context.py, sampler.py) against llama-cpp-python's
Llama on the same real models: the same tokens, the same logits bit for bit, the same greedy and
seeded choices; sequences that share, cut, shift and save their cells."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cg.engine.local import engine as local
from cg.engine.local.context import Context, DecodeError, Model
from cg.engine.local.sampler import Sampler
from cg.engine.protocol import Sampling, Timings

from .helpers import NO_STOPS_BIAS


def _text(n: int) -> str:
    return "".join(f"def f{i}(x):\n    return x * {i} + {i * 7 % 13}\n\n" for i in range(n))


@pytest.fixture(scope="module")
def llama_ref(tiny_gguf):
    """llama-cpp-python's Llama as the landed engine made it (128-token physical batches)."""
    import llama_cpp

    ref = llama_cpp.Llama(model_path=str(tiny_gguf), n_ctx=2048, n_threads=2, n_ubatch=128, verbose=False)
    yield ref
    ref.close()


@pytest.fixture(scope="module")
def tiny(tiny_gguf):
    eng = local.load(tiny_gguf, n_ctx=2048, n_threads=2)
    yield eng
    eng.llm.close()


def _reference(ref, prompt: list[int], n: int, **kw) -> list[int]:
    ref.reset()
    out = []
    args = {"temp": 0.0, "top_k": 40, "top_p": 0.95, "min_p": 0.05, "repeat_penalty": 1.0, **kw}
    for token in ref.generate(prompt, **args):
        out.append(int(token))
        if len(out) == n:
            break
    return out


def _ours(eng, prompt: list[int], n: int, *, sampling: Sampling | None = None, bias=None, exact=True) -> list[int]:
    pieces = eng.generate(prompt, max_tokens=n, sampling=sampling or Sampling(), logit_bias=bias, logits_processor=None,
                          timings=Timings(), on_prompt=None, exact=exact)
    return [p.ids[0] for p in pieces]


def test_tokens_text_and_metadata_are_llama_cpp_pythons(tiny, llama_ref):
    model = tiny.llm.model
    for text in ["def f(x):\n    return x\n", "  tabs\tand ünïcode ✓", "<|fim_middle|> as text", ""]:
        raw = text.encode()
        assert model.tokenize(raw, add_bos=False, special=False) == llama_ref.tokenize(raw, add_bos=False)
        assert model.tokenize(raw, add_bos=True, special=True) == llama_ref.tokenize(raw, add_bos=True, special=True)
        ids = llama_ref.tokenize(raw, add_bos=True)
        assert model.detokenize(ids) == llama_ref.detokenize(ids)
    assert model.metadata() == llama_ref.metadata
    assert (model.bos(), model.eos(), model.n_vocab) == (llama_ref.token_bos(), llama_ref.token_eos(),
                                                         llama_ref.n_vocab())


def test_a_long_piece_and_a_long_text_are_whole(tiny):
    model = tiny.llm.model
    long_text = ("x" * 5000 + " y") * 3
    ids = model.tokenize(long_text.encode())
    assert model.detokenize(ids).decode() == long_text


def test_prompt_logits_are_llamas_bit_for_bit(tiny, llama_ref):
    prompt = [tiny.info.bos, *tiny.tokenize_text(_text(40))][:700]
    tiny.kv.clear()
    row = tiny.kv.prepare(prompt, Timings(), None, None, exact=True)
    ours = np.array(tiny.llm.logits(row))
    llama_ref.reset()
    import llama_cpp

    for at in range(0, 640, 128):  # the landed engine's batches: whole n_ubatch ones, then the rest
        llama_ref.eval(prompt[at:at + 128])
    llama_ref.eval(prompt[640:])
    theirs = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llama_ref.ctx, -1), shape=(llama_ref.n_vocab(),))
    assert np.array_equal(ours, theirs)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.integers(1, 60), cut=st.integers(0, 400), seed=st.integers(0, 2**31))
def test_greedy_and_seeded_tokens_are_llamas(tiny, llama_ref, lines, cut, seed):
    import llama_cpp

    prompt = [tiny.info.bos, *tiny.tokenize_text(_text(lines))]
    prompt = prompt[:max(2, len(prompt) - cut)]
    assert _ours(tiny, prompt, 8, bias=NO_STOPS_BIAS) == _reference(
        llama_ref, prompt, 8, logits_processor=llama_cpp.LogitsProcessorList([_bias_processor(NO_STOPS_BIAS)]))
    sampling = Sampling(temperature=0.9, top_k=20, top_p=0.9, min_p=0.02, repeat_penalty=1.1, seed=seed)
    llama_ref.set_seed(seed)
    assert _ours(tiny, prompt, 8, sampling=sampling) == _reference(
        llama_ref, prompt, 8, temp=0.9, top_k=20, top_p=0.9, min_p=0.02, repeat_penalty=1.1)


def _bias_processor(bias):
    ids, values = list(bias), list(bias.values())

    def process(_ids, logits):
        logits[ids] += values
        return logits

    return process


def test_sequences_share_cut_and_shift_their_cells(tiny):
    ctx: Context = tiny.llm
    tiny.kv.clear()
    a, b = ctx.sequence(2), ctx.sequence(3)
    prompt = [tiny.info.bos, *tiny.tokenize_text(_text(20))]
    ctx.evaluate(a, prompt)
    assert a.tokens == prompt and a.span() == (0, len(prompt) - 1) and a.complete()
    a.share_prefix(b, 128)
    assert b.tokens == prompt[:128] and b.span() == (0, 127)
    # The shared prefix then the rest: the logits of evaluating the whole prompt fresh.
    row = ctx.evaluate(b, prompt[128:])
    shared = np.array(ctx.logits(row))
    c = ctx.sequence(4)
    row = ctx.evaluate(c, prompt)
    assert np.abs(np.array(ctx.logits(row)) - shared).max() <= 1e-3 * np.abs(shared).max()
    b.truncate(100)
    assert b.tokens == prompt[:100] and b.span() == (0, 99) and a.span() == (0, len(prompt) - 1)
    b.shift(0, 100, 50)
    assert b.span() == (50, 149)
    b.keep_only()
    assert a.span() == (-1, -1) and c.span() == (-1, -1) and b.span() == (50, 149)
    ctx.clear()
    assert all(s.span() == (-1, -1) and not s.tokens for s in ctx.sequences)


def test_a_step_decodes_one_token_for_each_sequence(tiny):
    ctx = tiny.llm
    tiny.kv.clear()
    seqs = [ctx.sequence(i) for i in (2, 3, 4)]
    for k, seq in enumerate(seqs):
        ctx.evaluate(seq, [tiny.info.bos, *tiny.tokenize_text(f"x{k} = {k}\n")])
    rows = ctx.step([(seq, 100 + k) for k, seq in enumerate(seqs)])
    assert rows == [0, 1, 2] and [s.tokens[-1] for s in seqs] == [100, 101, 102]
    assert all(s.span()[1] == len(s.tokens) - 1 for s in seqs)
    ctx.clear()


def test_a_context_too_small_for_a_batch_says_so(tiny_gguf):
    model = Model(tiny_gguf)
    ctx = Context(model, n_ctx=256, n_threads=2, n_ubatch=128, n_seq_max=2)
    try:
        ctx.evaluate(ctx.sequence(0), [2] * 256)
        with pytest.raises(DecodeError) as err:
            ctx.evaluate(ctx.sequence(1), [2] * 10)
        assert err.value.code == 1  # no room in the KV memory; nothing changed
        assert ctx.sequence(1).span() == (-1, -1) and ctx.sequence(1).tokens == []
    finally:
        ctx.close()


def test_state_of_every_cell_round_trips(tiny):
    ctx = tiny.llm
    tiny.kv.clear()
    prompt = [tiny.info.bos, *tiny.tokenize_text(_text(10))]
    row = ctx.evaluate(tiny.kv.main, prompt)
    before = np.array(ctx.logits(row))
    state = ctx.state()
    assert state is not None
    tiny.kv.clear()
    assert tiny.kv.restore(prompt, state) and tiny.kv.main.span() == (0, len(prompt) - 1)
    tiny.kv.main.truncate(len(prompt) - 1)
    row = ctx.evaluate(tiny.kv.main, prompt[-1:])
    assert int(np.argmax(ctx.logits(row))) == int(np.argmax(before))


def test_the_sampler_chain(tiny):
    ctx = tiny.llm
    tiny.kv.clear()
    row = ctx.evaluate(tiny.kv.main, [tiny.info.bos, *tiny.tokenize_text("def f():\n")])
    logits = np.array(ctx.logits(row))
    with Sampler(ctx, Sampling()) as greedy:
        assert greedy.sample(row, tiny.kv.main.tokens) == int(np.argmax(logits))
    low = int(np.argmin(logits))
    with Sampler(ctx, Sampling(), logit_bias={low: 1e6}) as biased:
        assert biased.sample(row, tiny.kv.main.tokens) == low
    draws = set()
    for seed in range(6):
        with Sampler(ctx, Sampling(temperature=5.0, top_k=0, top_p=1.0, min_p=0.0, seed=seed)) as hot:
            draws.add(hot.sample(row, []))
    assert len(draws) > 1  # the seed is used: hot sampling draws differ
    with Sampler(ctx, Sampling(temperature=5.0, seed=3)) as a, Sampler(ctx, Sampling(temperature=5.0, seed=3)) as b:
        assert a.sample(row, []) == b.sample(row, [])
    seen = []  # last: a processor writes llama.cpp's logits in place

    def processor(ids, values):
        seen.append(list(ids))
        values[5] = 1e9
        return values

    with Sampler(ctx, Sampling(), logits_processor=processor) as forced:
        assert forced.sample(row, tiny.kv.main.tokens) == 5 and seen == [tiny.kv.main.tokens]


def test_the_extra_buffer_types_are_a_load_parameter(tiny_gguf):
    on = local.load(tiny_gguf, n_ctx=256, use_extra_bufts=True)
    off = local.load(tiny_gguf, n_ctx=256, use_extra_bufts=False)
    try:
        assert on.llm.model_params.use_extra_bufts and not off.llm.model_params.use_extra_bufts
        prompt = [on.info.bos, *on.tokenize_text("def f():\n")]
        assert _ours(on, prompt, 6) == _ours(off, prompt, 6)
    finally:
        on.llm.close()
        off.llm.close()


def test_a_build_with_amx_kernels_loads_weights_without_the_extra_buffer_types(tiny_gguf, monkeypatch):
    """llama.cpp's AMX kernels crash in llama_decode on some machines (this project's CI: SIGSEGV
    on an 800-token prompt of the 270M; llama.cpp #20824, open): where the build has them, cg
    leaves the extra buffer types off unless CG_AMX is on."""
    import llama_cpp

    from cg.engine.local import context
    from cg.errors import UsageError

    built = "AMX_INT8 = 1" in llama_cpp.llama_print_system_info().decode()
    assert context.built_with_amx() == built
    monkeypatch.delenv("CG_AMX", raising=False)
    assert local.repack_weights() == (not built)
    monkeypatch.setattr(local, "built_with_amx", lambda: True)
    assert not local.repack_weights()
    amx = local.load(tiny_gguf, n_ctx=256)
    try:
        assert not amx.llm.model_params.use_extra_bufts
        assert len(_ours(amx, [amx.info.bos, *amx.tokenize_text("x = ")], 3)) == 3
    finally:
        amx.llm.close()
    monkeypatch.setenv("CG_AMX", "1")
    assert local.repack_weights()
    monkeypatch.setenv("CG_AMX", "maybe")
    with pytest.raises(UsageError, match="CG_AMX"):
        local.load(tiny_gguf, n_ctx=256)
    monkeypatch.setattr(local, "built_with_amx", lambda: False)
    monkeypatch.setenv("CG_AMX", "0")
    assert local.repack_weights()  # nothing to avoid: repacking stays on
