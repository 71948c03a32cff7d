"""What spliced prompt reuse costs in quality, on real weights (the bundled Gemma 3 270M, full-size
sliding-window cache): over N edits (a line inserted, deleted or changed) in real source files
that are not in cg's tests (the standard library's), how often the greedy continuation (first 32
tokens) after a spliced prompt equals a fresh evaluation's, and the mean KL divergence of the
first token's distribution, for each number K of tokens evaluated again after each splice.

Each edit: the old text's prompt is evaluated fresh (its state kept), the new text's prompt is
evaluated fresh (the reference), then for each K the old state is restored and the new prompt
prepared by cg's own path (kvcache.prepare -> reuse.splice, K = reuse.FRESH) and decoded.
A last row, "prefix, unaligned", reuses only the common prefix but resumes mid-batch: the same
context as fresh, other float rounding: the noise floor every reuse that is not exact lives with.

    python benchmarks/bench_reuse_quality.py --edits 200 --out /tmp/quality.json [--model codegemma-2b.gguf]

With --chain N, instead: N successive edits of one file, each spliced (K = reuse.FRESH) from the
state the last splice left, as several targets in one process are (`cg infill F:10 F:42 F:90
--splice`); one row per depth, so what a splice of already-moved cells costs shows against the
first splice.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: F401  (puts the repository on sys.path)

from cg.engine import Timings, decode
from cg.engine.local import engine as local
from cg.engine.local import reuse
from cg.models import store

MODULES = ["argparse", "difflib", "inspect", "json.decoder", "pathlib", "shutil", "subprocess", "tarfile",
           "typing", "zipfile", "logging", "email.message", "http.client", "dataclasses", "ast"]
KS = [0, 8, 32, 128]
STEPS = 32


def _kl(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    p = np.exp(p_logits - p_logits.max())
    p /= p.sum()
    q = np.exp(q_logits - q_logits.max())
    q /= q.sum()
    return float(np.sum(p * (np.log(p + 1e-30) - np.log(q + 1e-30))))


def _edit(lines: list[str], rng: random.Random, pool: list[str]) -> tuple[list[str], str]:
    at = rng.randrange(1, len(lines) - 2)
    kind = rng.choice(["insert", "delete", "change"])
    out = list(lines)
    if kind == "insert":
        out.insert(at, rng.choice(pool))
    elif kind == "delete":
        del out[at]
    else:
        line = out[at]
        spots = [i for i, c in enumerate(line) if c.isalnum()]
        if not spots:
            out[at] = line.rstrip("\n") + "  # changed\n"
        else:
            i = rng.choice(spots)
            out[at] = line[:i] + rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") + line[i + 1:]
    return out, kind


class Runner:
    def __init__(self, model: Path, threads: int, ctx: int):
        self.eng = local.load(model, n_ctx=ctx, n_threads=threads)
        assert self.eng.kv.can_shift, f"{model.name}'s cache cannot shift (swa_full?)"

    def run(self, prompt: list[int], *, exact: bool) -> tuple[list[int], np.ndarray, Timings]:
        first: list[np.ndarray] = []

        def capture(_ids: np.ndarray, logits: np.ndarray) -> np.ndarray:
            if not first:
                first.append(np.array(logits, dtype=np.float64))
            return logits

        timings = Timings()
        tokens = [e.token for e in decode(self.eng, prompt, max_tokens=STEPS, logits_processor=capture,
                                          timings=timings, exact=exact) if e.token is not None]
        return tokens, first[0], timings

    def state_of(self, prompt: list[int]) -> bytes:
        self.eng.kv.clear()
        self.run(prompt, exact=True)
        state = self.eng.kv.cells.state()
        assert state is not None
        return state

    def restore(self, prompt: list[int], state: bytes) -> None:
        assert self.eng.kv.restore(prompt, state)

    def unaligned_prefix(self, old: list[int], new: list[int], state: bytes) -> tuple[list[int], np.ndarray]:
        """The same context as fresh, resumed mid-batch: the noise floor."""
        self.restore(old, state)
        prefix = min(reuse.common_prefix(old, new), len(new) - 1)
        kv = self.eng.kv
        kv.llm.n_tokens = prefix  # llama-cpp-python's generate() evaluates the rest from here, in one go
        saved = kv.prepare
        kv.prepare = lambda *a, **k: None  # type: ignore[method-assign]  # the state is ready as it is
        try:
            tokens, first, _ = self.run(new, exact=False)
        finally:
            kv.prepare = saved
        return tokens, first


def _window(sources: dict[str, list[str]], rng: random.Random, n_lines: int) -> tuple[list[str], list[str]]:
    """A random module's lines, and a window of n_lines of them."""
    lines = sources[rng.choice(MODULES)]
    top = rng.randrange(0, max(1, len(lines) - n_lines))
    return lines, lines[top:top + n_lines]


def _new_row() -> dict[str, list[float]]:
    return {"same": [], "kl": [], "evaluated": [], "spliced": []}


def _record(row: dict[str, list[float]], tokens: list[int], first: np.ndarray, ref_tokens: list[int],
            ref_first: np.ndarray, evaluated: float, spliced: bool) -> None:
    row["same"].append(float(tokens == ref_tokens))
    row["kl"].append(_kl(ref_first, first))
    row["evaluated"].append(evaluated)
    row["spliced"].append(float(spliced))


def _table_row(key: object, row: dict[str, list[float]]) -> str:
    return (f"| {key} | {100 * statistics.mean(row['same']):.1f}% | {statistics.mean(row['kl']):.2e} | "
            f"{100 * statistics.mean(row['spliced']):.0f}% | {statistics.mean(row['evaluated']):.0f} |")


def report(rows: dict[str, dict[str, list[float]]], fresh_evaluated: list[int], kinds: list[str],
           out: Path | None, model: str, file=sys.stdout) -> None:
    """The table (and, with --out, the raw rows) for the edits measured so far."""
    edits = len(kinds)
    print(f"{edits} edits ({', '.join(f'{kinds.count(k)} {k}' for k in ('insert', 'delete', 'change'))}) in "
          f"{len(MODULES)} standard-library modules, prompts of {statistics.mean(fresh_evaluated):.0f} tokens on "
          f"average, {model}, greedy, {STEPS} tokens", file=file)
    print("| K (re-evaluated after each splice) | identical continuations | mean KL, first token | spliced edits | "
          f"mean tokens evaluated (fresh: {statistics.mean(fresh_evaluated):.0f}) |", file=file)
    print("|---|---|---|---|---|", file=file)
    for key, row in rows.items():
        print(_table_row(key, row), file=file)
    if out:
        out.write_text(json.dumps({"rows": rows, "fresh_evaluated": fresh_evaluated, "kinds": kinds}))


def chained(runner: Runner, fresh: Runner, sources: dict[str, list[str]], rng: random.Random, chains: int,
            depth: int, n_lines: int) -> None:
    """Each chain: one file's prompt evaluated exactly, then `depth` edits, each spliced from the
    cells the last one left (never restored from an exact state); references from a second engine."""
    rows = {d: _new_row() for d in range(1, depth + 1)}
    started = time.perf_counter()
    tok = runner.eng.tokenize_text
    for n in range(chains):
        lines, window = _window(sources, rng, n_lines)
        runner.eng.kv.clear()
        runner.run([runner.eng.info.bos, *tok("".join(window))], exact=True)
        for d in range(1, depth + 1):
            window, _ = _edit(window, rng, lines)
            prompt = [runner.eng.info.bos, *tok("".join(window))]
            fresh.eng.kv.clear()
            ref_tokens, ref_first, _ = fresh.run(prompt, exact=True)
            tokens, first, t = runner.run(prompt, exact=False)
            _record(rows[d], tokens, first, ref_tokens, ref_first, float(t.evaluated_tokens or 0), t.reuse == "splice")
        if (n + 1) % 10 == 0 or n + 1 == chains:
            print(f"{n + 1} chains, {time.perf_counter() - started:.0f} s", file=sys.stderr)
            out = sys.stdout if n + 1 == chains else sys.stderr
            print(f"{n + 1} chains of {depth} edits, K = {reuse.FRESH}, {runner.eng.info.label}, greedy, {STEPS} "
                  "tokens", file=out)
            print("| splice of the chain | identical continuations | mean KL, first token | spliced | "
                  "mean tokens evaluated |", file=out)
            print("|---|---|---|---|---|", file=out)
            for d, row in rows.items():
                print(_table_row(d, row), file=out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--edits", type=int, default=200)
    ap.add_argument("--model", type=Path, help="a GGUF (default: the bundled Gemma 3 270M), e.g. codegemma-2b's")
    ap.add_argument("--lines", type=int, default=110, help="lines of a file in the prompt (about 900 tokens)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--chain", type=int, metavar="N", help="N successive spliced edits per file (--edits files)")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    sources = {m: inspect.getsource(importlib.import_module(m)).splitlines(keepends=True) for m in MODULES}
    runner = Runner(args.model or store.bundled_model_path(), args.threads, ctx=2048)
    if args.chain:
        fresh = Runner(args.model or store.bundled_model_path(), args.threads, ctx=2048)
        chained(runner, fresh, sources, rng, args.edits, args.chain, args.lines)
        return
    rows = {str(k): _new_row() for k in [*KS, "prefix, unaligned"]}
    fresh_evaluated, started, kinds = [], time.perf_counter(), []
    for n in range(args.edits):
        lines, window = _window(sources, rng, args.lines)
        edited, kind = _edit(window, rng, lines)
        kinds.append(kind)
        bos = runner.eng.info.bos
        old = [bos, *runner.eng.tokenize_text("".join(window))]
        new = [bos, *runner.eng.tokenize_text("".join(edited))]
        state = runner.state_of(old)
        runner.eng.kv.clear()
        ref_tokens, ref_first, ref_t = runner.run(new, exact=True)
        fresh_evaluated.append(ref_t.evaluated_tokens or len(new))
        for k in KS:
            reuse.FRESH = k
            runner.restore(old, state)
            tokens, first, t = runner.run(new, exact=False)
            _record(rows[str(k)], tokens, first, ref_tokens, ref_first, float(t.evaluated_tokens or 0),
                    t.reuse == "splice")
        reuse.FRESH = 32
        tokens, first = runner.unaligned_prefix(old, new, state)
        _record(rows["prefix, unaligned"], tokens, first, ref_tokens, ref_first,
                float(len(new) - min(reuse.common_prefix(old, new), len(new) - 1)), False)
        if (n + 1) % 20 == 0:
            print(f"{n + 1} edits, {time.perf_counter() - started:.0f} s", file=sys.stderr)
            # a long run that dies still tells
            report(rows, fresh_evaluated, kinds, args.out, runner.eng.info.label, file=sys.stderr)
    report(rows, fresh_evaluated, kinds, args.out, runner.eng.info.label)


if __name__ == "__main__":
    main()
