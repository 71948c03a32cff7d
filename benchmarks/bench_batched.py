"""Targets decoded together (LocalEngine.generate_many) against one after another, and against
the landed engine (llama-cpp-python's Llama.generate() after cg's KV-cache preparation, read from
git at --landed), all in one run so the ratios compare like with like.

    python benchmarks/bench_batched.py [--model GGUF] [--threads 2] [-n 128] [--targets 5] [--lines 300]
        [--agreement 200 --agreement-n 32]

--model: a GGUF (default: codegemma-2b's shape in Q4_K_M from `bench_quantize.py --types q4_k_m
--keep` when it is there, else the bundled Gemma 3 270M). Every target's stop ids are biased away,
so each decodes its -n tokens (random weights stop at once otherwise). Prompts are PSM (FIM models)
or prefix + a comment line + suffix (the 270M has no FIM tokens), 2048-token windows at most.
Peak RSS: a child process per figure (1 sequence, N sequences). --agreement K: K prompts (groups of
--targets) decoded together and one at a time, greedy: how many texts differ (float rounding).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, WORKDIR, child, source_text

LANDED = "dba38f7"  # the last commit whose engine drove llama-cpp-python's Llama
WINDOW = 2048


def _landed_module(rev: str, repo: Path):  # a module built at run time
    """The landed engine (engine.py + kvcache.py at rev) as a package of its own."""
    folder = Path(tempfile.mkdtemp(prefix="cg-landed-")) / "landed_local"
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    for name in ("engine", "kvcache"):
        text = subprocess.run(["git", "-C", str(repo), "show", f"{rev}:cg/engine/local/{name}.py"],
                              capture_output=True, text=True, check=True).stdout
        text = text.replace("from cg.engine.local.kvcache import", "from landed_local.kvcache import")
        text = text.replace("from cg.engine import (", "from cg.engine.protocol import (")
        text = text.replace("from cg.engine import PromptProgress", "from cg.engine.protocol import PromptProgress")
        text = text.replace("import MIN_GAIN", "import DISK_MIN_GAIN as MIN_GAIN")  # renamed since
        text = text.replace("reuse.MIN_GAIN", "reuse.SPLICE_MIN_GAIN")
        (folder / f"{name}.py").write_text(text)
    sys.path.insert(0, str(folder.parent))
    spec = importlib.util.find_spec("landed_local.engine")
    assert spec is not None
    return importlib.import_module("landed_local.engine")


def default_model() -> Path:
    shaped = WORKDIR / "codegemma-2b-shape-18l-q4_k_m.gguf"
    if shaped.exists():
        return shaped
    from cg.models import store

    return store.bundled_model_path()


def prompts(engine, lines: int, targets: int) -> list[list[int]]:
    """One prompt per target: markers spread over a `lines`-line file, bottom-up as cg infill."""
    text = source_text().splitlines(keepends=True)[:lines]
    sp = engine.info.special
    tok = engine.tokenize_text
    out = []
    for k in range(targets):
        cursor = len(text) * (k + 1) // (targets + 1)
        prefix, suffix = tok("".join(text[:cursor])), tok("".join(text[cursor:]))
        keep_suffix = min(len(suffix), WINDOW // 4)
        prefix = prefix[-(WINDOW - keep_suffix - 8):]
        suffix = suffix[:keep_suffix]
        if sp.fim_pre is not None and sp.fim_suf is not None and sp.fim_mid is not None:
            out.append([engine.info.bos, sp.fim_pre, *prefix, sp.fim_suf, *suffix, sp.fim_mid])
        else:
            out.append([engine.info.bos, *prefix, *tok("\n# --- the rest of the file ---\n"), *suffix])
    return out[::-1]


def stop_bias(engine) -> dict[int, float]:
    ids = set(engine.info.special.stop_ids)
    return {i: -1e4 for i in ids if 0 <= i < engine.info.n_vocab}


def run_one(engine, prompt, n, bias) -> tuple[list[int], float, float]:
    """(tokens, wall seconds, prompt seconds) of one generate()."""
    from cg.engine.protocol import Sampling, Timings

    start = time.perf_counter()
    first = None
    tokens = []
    for piece in engine.generate(prompt, max_tokens=n, sampling=Sampling(), logit_bias=bias, logits_processor=None,
                                 timings=Timings(), on_prompt=None, exact=True):
        first = first or time.perf_counter()
        tokens.extend(piece.ids)
        if len(tokens) >= n:  # the landed engine's generate() runs on until closed
            break
    return tokens, time.perf_counter() - start, (first or start) - start


PHASES: dict[str, float] = {}


def run_many(engine, ps, n, bias) -> tuple[dict[int, list[int]], float]:
    """(tokens by job, wall seconds); PHASES gets the prompts' share (all prompts are read first)."""
    from cg.engine.local.batched import Job

    start = time.perf_counter()
    first = None
    out: dict[int, list[int]] = {i: [] for i in range(len(ps))}
    for i, piece in engine.generate_many([Job(p, n, logit_bias=bias) for p in ps]):
        first = first or time.perf_counter()
        out[i].extend(piece.ids)
    PHASES["together prompts"] = (first or start) - start
    return out, time.perf_counter() - start


def rss_child(model: str, threads: int, lines: int, targets: int, n: int, ctx: int) -> float:
    code = ("import sys; sys.path.insert(0, 'benchmarks'); import bench_batched as b; "
            "from cg.engine.local import engine as local; "
            f"e = local.load({model!r}, n_ctx={ctx}, n_threads={threads}); "
            f"ps = b.prompts(e, {lines}, {targets}); b.run_many(e, ps, {n}, b.stop_bias(e))")
    _, rss, _ = child([sys.executable, "-c", code], cwd=ROOT)
    return rss


def agreement(engine, count: int, group: int, n: int, bias) -> tuple[int, int, int]:
    """(prompts, texts that differ between together and one at a time, of them differing in
    the first token)."""
    lines = source_text().splitlines(keepends=True)
    differ = first = done = 0
    k = 0
    while done < count:
        start = (k * 37) % max(1, len(lines) - 120)
        text = lines[start:start + 60 + k % 40]
        ps = []
        for t in range(group):
            cut = len(text) * (t + 1) // (group + 1)
            ps.append([engine.info.bos, *engine.tokenize_text("".join(text[:cut]))])
        together, _ = run_many(engine, ps, n, bias)
        for i, p in enumerate(ps):
            alone, _, _ = run_one(engine, p, n, bias)
            differ += alone != together[i]
            first += alone[:1] != together[i][:1]
        done += group
        k += 1
    return done, differ, first


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("--targets", type=int, default=5)
    ap.add_argument("--lines", type=int, default=300)
    ap.add_argument("--landed", default=LANDED)
    ap.add_argument("--repo", type=Path, default=ROOT, help="the git repository --landed is read from")
    ap.add_argument("--agreement", type=int, default=0)
    ap.add_argument("--agreement-n", type=int, default=32)
    ap.add_argument("--no-rss", action="store_true")
    args = ap.parse_args()
    model = str(args.model or default_model())
    ctx = 4096 * 2 if args.targets > 1 else 4096
    from cg.engine.local import engine as local

    landed = _landed_module(args.landed, args.repo)
    new = local.load(model, n_ctx=ctx, n_threads=args.threads)
    bias = stop_bias(new)
    ps = prompts(new, args.lines, args.targets)
    print(f"model {Path(model).name}, {args.threads} threads, -n {args.n}, {args.targets} targets in a "
          f"{args.lines}-line file, prompt tokens {[len(p) for p in ps]}")
    rows = {}
    # 1. The landed engine, one target after another (its own exact reuse between them).
    old = landed.load(model, n_ctx=ctx, n_threads=args.threads)
    t0 = time.perf_counter()
    old_out = [run_one(old, p, args.n, bias) for p in ps]
    rows["landed, one after another"] = time.perf_counter() - t0
    old.kv.clear()
    one_old = run_one(old, ps[0], args.n, bias)
    old.llm.close()
    del old
    # 2. This engine, one after another, then together.
    t0 = time.perf_counter()
    seq_out = [run_one(new, p, args.n, bias) for p in ps]
    rows["new, one after another"] = time.perf_counter() - t0
    PHASES["one after another prompts"] = sum(r[2] for r in seq_out)
    new.kv.clear()
    together, rows["new, together (generate_many)"] = run_many(new, ps, args.n, bias)
    new.kv.clear()
    one_new = run_one(new, ps[0], args.n, bias)
    base = rows["landed, one after another"]
    print(f"{'run':<34}{'wall s':>9}{'x landed':>10}")
    for name, sec in rows.items():
        print(f"{name:<34}{sec:>9.1f}{sec / base:>10.3f}")
    print(f"{'one target, landed':<34}{one_old[1]:>9.1f}{1.0:>10.3f}   prompt {len(ps[0]) / one_old[2]:.0f} tok/s")
    print(f"{'one target, new':<34}{one_new[1]:>9.1f}{one_new[1] / one_old[1]:>10.3f}   prompt "
          f"{len(ps[0]) / one_new[2]:.0f} tok/s ({len(ps[0]) / one_new[2] / (len(ps[0]) / one_old[2]):.3f}x landed)")
    gen_seq = rows["new, one after another"] - PHASES["one after another prompts"]
    gen_many = rows["new, together (generate_many)"] - PHASES["together prompts"]
    print(f"prompts: one after another {PHASES['one after another prompts']:.1f} s, together "
          f"{PHASES['together prompts']:.1f} s; generation ({args.targets} x {args.n} tokens): one after another "
          f"{gen_seq:.1f} s, together {gen_many:.1f} s ({gen_many / gen_seq:.3f}x)")
    same_seq = sum(a[0] == b[0] for a, b in zip(old_out, seq_out, strict=True))
    same_many = sum(a[0] == together[i] for i, a in enumerate(old_out))
    print(f"greedy tokens equal to the landed engine's: one after another {same_seq}/{len(ps)}, "
          f"together {same_many}/{len(ps)}; one target {one_old[0] == one_new[0]}")
    if args.agreement:
        done, differ, first = agreement(new, args.agreement, args.targets, args.agreement_n, bias)
        print(f"agreement: {done} prompts in groups of {args.targets}, -n {args.agreement_n}: {differ} texts differ "
              f"between together and one at a time ({differ / done:.1%}), {first} in the first token")
    new.llm.close()
    if not args.no_rss:
        rss = {k: rss_child(model, args.threads, args.lines, k, args.n, ctx) for k in (1, args.targets)}
        print("peak RSS MiB: " + json.dumps({f"{k} sequence(s)": round(v) for k, v in rss.items()}))


if __name__ == "__main__":
    main()
