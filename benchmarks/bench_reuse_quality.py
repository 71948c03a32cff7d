"""What spliced prompt reuse costs in what a user sees, on real weights (the bundled Gemma 3 270M,
full-size sliding-window cache): after an edit (a line inserted, deleted or changed) in a window of
a real source file, the model completes the line the cursor starts (the line after the window,
greedy, stopped at the newline), and each completion is scored against the file's real line: exact
match and a character-level edit similarity (difflib's ratio). Issue 32's measurement.

Arms, for each edit, all on the same prompt (the edited window); the old window is evaluated on an
empty cache first and its state kept:
- fresh: that state restored, the new prompt by cg's exact reuse (bit for bit a fresh run;
  --check-fresh N compares it with a cleared cache);
- K = 8, K = 32: that state restored, the new prompt spliced by cg's own path
  (`Engine.generate(..., exact=False)` -> kvcache -> reuse.splice, K = reuse.FRESH tokens evaluated
  again after each splice);
- noise floor: the common prefix kept, the rest evaluated from there, mid-batch instead of on the
  128-token grid: the same context as fresh, other float rounding (what any reuse that is not
  bit-exact lives with; the earlier "prefix, unaligned" row). A second engine with another
  physical batch (96) gave logits equal to fresh bit for bit here, so it cannot be the floor.
Each arm's mean has a 95% bootstrap interval; each arm's paired difference to fresh a paired
bootstrap interval (fixed seed) and, for exact match, McNemar's exact test.

Chains: one window evaluated exactly, then `--depth` successive edits of it, each spliced from the
state the last splice left (as several targets in one process are: `cg infill F:10 F:42 --splice`),
at each K; the same scores per splice of the chain, paired with an exact evaluation of each prompt.
Chains are run interleaved with the edits, so a run cut short still has both tables.

    python benchmarks/bench_reuse_quality.py --edits 400 --chains 60 --out /tmp/quality.json [--model X.gguf]

Measured through the Engine protocol (Engine.generate with exact=True / False, the reuse fields of
Timings). cg internals used besides: cg.engine.local.engine.load, LocalEngine.kv (KvCache.clear,
.restore(tokens, state), .cells.state(), .prepare), cg.engine.local.reuse.FRESH (read at each
splice: K) and reuse.common_prefix; for the noise floor only, which replaces KvCache.prepare for one
call, .cells.remove (the llama-cpp-python engine, dba38f7) or .main.truncate and .context.evaluate
(the C-API engine, 4cdda15 on); KvCache.max_splice_depth, lifted to --depth so that chains
measure every depth (cg refreshes a state after SPLICE_DEPTH splices). No llama-cpp-python
attribute is written. The results file is rewritten every --every edits; --report JSON prints its
tables again.
"""

from __future__ import annotations

import argparse
import codecs
import difflib
import importlib
import inspect
import json
import math
import random
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: F401  (puts the repository on sys.path)

from cg.engine import Engine, Sampling, Timings
from cg.engine.local import engine as local
from cg.engine.local import reuse
from cg.engine.local.engine import LocalEngine
from cg.models import store

# Standard-library modules no file under tests/ names (checked 2026-12-02 with grep -w).
MODULES = ["argparse", "difflib", "inspect", "tarfile", "zipfile", "logging", "email.message", "calendar",
           "configparser", "csv", "fractions", "ftplib", "gettext", "imaplib", "mailbox", "optparse",
           "pickletools", "pydoc", "smtplib", "statistics", "trace", "wave", "xml.dom.minidom", "_pydecimal",
           "shlex", "locale", "bdb", "pdb", "codecs"]
LINE_TOKENS = 48  # a completion longer than this without a newline is cut (no stdlib line is that long)
BOOT = 10_000
SEED_BOOT = 32


# --- the edits ------------------------------------------------------------------------------------

def _edit(lines: list[str], rng: random.Random, pool: list[str]) -> tuple[list[str], str, int]:
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
    return out, kind, at


def _window(sources: dict[str, list[str]], rng: random.Random, n_lines: int) -> tuple[str, list[str], list[str], str]:
    """A random module, its lines, a window of n_lines of them, and the line after the window (the
    one the cursor starts), never a blank one: an empty target says nothing about the model."""
    while True:
        name = rng.choice(MODULES)
        lines = sources[name]
        top = rng.randrange(0, len(lines) - n_lines - 1)
        target = lines[top + n_lines]
        if target.strip():
            return name, lines, lines[top:top + n_lines], target.rstrip("\n")


# --- one completion --------------------------------------------------------------------------------

@dataclass
class Line:
    text: str
    evaluated: int
    spliced: bool


def _generate(eng: Engine, prompt: list[int], timings: Timings, *, max_tokens: int, exact: bool) -> Iterator[str]:
    """Greedy text after prompt, through the Engine protocol (its stop ids end it)."""
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
    stops = eng.info.special.stop_ids
    pieces = eng.generate(prompt, max_tokens=max_tokens, sampling=Sampling(), logit_bias=None, logits_processor=None,
                          timings=timings, on_prompt=None, exact=exact)
    try:
        for piece in pieces:
            if any(i in stops for i in piece.ids) or piece.stop_id is not None:
                return
            yield utf8.decode(piece.text) if isinstance(piece.text, bytes) else piece.text
    finally:
        pieces.close()  # the local engine trims its KV cache to the prompt


def complete_line(eng: Engine, prompt: list[int], *, exact: bool) -> Line:
    """The greedy completion of the line the prompt's end starts, up to its newline."""
    timings, text = Timings(), ""
    for n, piece in enumerate(_generate(eng, prompt, timings, max_tokens=LINE_TOKENS, exact=exact), 1):
        text += piece
        if "\n" in text or n >= LINE_TOKENS:
            break
    return Line(text.split("\n", 1)[0], int(timings.evaluated_tokens or 0), timings.reuse == "splice")


def prime(eng: Engine, prompt: list[int]) -> None:
    """Leave the prompt's exact state in the engine's KV cache (exact reuse of whatever it held:
    bit for bit a fresh evaluation)."""
    for _ in _generate(eng, prompt, Timings(), max_tokens=1, exact=True):
        break


def spliced_line(eng: Engine, prompt: list[int], k: int) -> Line:
    saved = reuse.FRESH
    reuse.FRESH = k
    try:
        return complete_line(eng, prompt, exact=False)
    finally:
        reuse.FRESH = saved


def similarity(a: str, b: str) -> float:
    a, b = a.rstrip(), b.rstrip()
    return 1.0 if a == b else difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def score(line: Line, target: str) -> dict[str, Any]:
    return {"text": line.text, "exact": float(line.text.rstrip() == target.rstrip()),
            "sim": similarity(line.text, target), "evaluated": line.evaluated, "spliced": line.spliced}


# --- statistics -----------------------------------------------------------------------------------

def _boot(values: np.ndarray, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(BOOT, len(values)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def mcnemar(fresh: np.ndarray, arm: np.ndarray) -> tuple[int, int, float]:
    """Edits only fresh got right, only the arm got right, and the exact two-sided p-value."""
    b, c = int(np.sum((fresh == 1) & (arm == 0))), int(np.sum((fresh == 0) & (arm == 1)))
    n = b + c
    if n == 0:
        return b, c, 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2 ** n
    return b, c, min(1.0, 2 * tail)


def cp_upper(k: int, n: int) -> float:
    """Clopper-Pearson's 95% upper bound of a rate seen k times in n (bisection on the binomial CDF)."""
    if k >= n:
        return 1.0
    low, high = k / n, 1.0
    for _ in range(60):
        p = (low + high) / 2
        cdf = sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k + 1))
        low, high = (p, high) if cdf > 0.025 else (low, p)
    return high


def summarize(records: list[dict[str, Any]], arms: list[str]) -> dict[str, Any]:
    """Per arm: means with 95% intervals; against fresh: paired differences (arm - fresh) and
    losses (fresh - arm) with intervals, McNemar for exact match, how often the line equals fresh's."""
    out: dict[str, Any] = {"n": len(records)}
    if not records:
        return out
    fresh = {m: np.array([r["fresh"][m] for r in records], dtype=np.float64) for m in ("exact", "sim")}
    for arm in arms:
        row: dict[str, Any] = {}
        for m in ("exact", "sim"):
            v = np.array([r[arm][m] for r in records], dtype=np.float64)
            row[m] = [float(v.mean()), *_boot(v, SEED_BOOT)]
            if arm != "fresh":
                d = v - fresh[m]
                low, high = _boot(d, SEED_BOOT)  # the same resamples for every arm: paired
                row[m + "_diff"] = [float(d.mean()), low, high]
                row[m + "_loss_upper"] = -low
        if arm != "fresh":
            row["mcnemar"] = mcnemar(fresh["exact"], np.array([r[arm]["exact"] for r in records]))
            # The loss is at most the rate of edits only fresh got right: a bound that holds however
            # few edits are discordant (the bootstrap interval is [0, 0] when none is).
            row["exact_loss_upper_cp"] = cp_upper(row["mcnemar"][0], len(records))
            row["same_as_fresh"] = statistics.mean(float(r[arm]["text"] == r["fresh"]["text"]) for r in records)
        row["spliced"] = statistics.mean(float(r[arm]["spliced"]) for r in records)
        row["evaluated"] = statistics.mean(r[arm]["evaluated"] for r in records)
        out[arm] = row
    return out


def passes(row: dict[str, Any]) -> bool:
    """Issue 32's rule: the upper end of the loss's 95% interval <= 1 point, for both scores."""
    return row["exact_loss_upper"] <= 0.01 and row["sim_loss_upper"] <= 0.01


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _diff(d: list[float]) -> str:
    return f"{100 * d[0]:+.1f} [{100 * d[1]:+.1f}, {100 * d[2]:+.1f}]"


def _against_fresh(r: dict[str, Any]) -> list[str]:
    """exact - fresh, McNemar, the conservative bound, similarity - fresh, line = fresh's."""
    b, c, p = r["mcnemar"]
    return [_diff(r["exact_diff"]), f"{b} / {c}, p = {p:.2f}", _pct(r["exact_loss_upper_cp"]), _diff(r["sim_diff"]),
            f"{_pct(r['same_as_fresh'])}%"]


_AGAINST = ("exact - fresh, points [95% CI] | McNemar (only fresh / only arm, p) | exact loss, bound (CP) | "
            "similarity - fresh, points [95% CI] | line = fresh's")


def table(summary: dict[str, Any], arms: list[str], first: str) -> list[str]:
    rows = [f"| {first} | exact match % [95% CI] | edit similarity % [95% CI] | {_AGAINST} | spliced | "
            "tokens evaluated | rule met |", "|---" * 11 + "|"]
    for arm in arms:
        r = summary[arm]
        e, s = r["exact"], r["sim"]
        cells = [arm, f"{_pct(e[0])} [{_pct(e[1])}, {_pct(e[2])}]", f"{_pct(s[0])} [{_pct(s[1])}, {_pct(s[2])}]"]
        if "exact_diff" in r:
            cells += [*_against_fresh(r), f"{100 * r['spliced']:.0f}%", f"{r['evaluated']:.0f}",
                      "yes" if passes(r) else "no"]
        else:
            cells += ["", "", "", "", "", "", f"{r['evaluated']:.0f}", ""]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def chain_table(by_depth: dict[int, dict[str, Any]], arm: str) -> list[str]:
    rows = [f"| splice of the chain | fresh exact % | spliced exact % | fresh similarity % | spliced similarity % | "
            f"{_AGAINST} | spliced | rule met |", "|---" * 12 + "|"]
    for d, s in by_depth.items():
        if s["n"] == 0:
            continue
        r, f = s[arm], s["fresh"]
        cells = [str(d), _pct(f["exact"][0]), _pct(r["exact"][0]), _pct(f["sim"][0]), _pct(r["sim"][0]),
                 *_against_fresh(r), f"{100 * r['spliced']:.0f}%", "yes" if passes(r) else "no"]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


# --- the run --------------------------------------------------------------------------------------

@dataclass
class Run:
    args: argparse.Namespace
    eng: LocalEngine | None  # None: tables printed again from a results file (--report)
    sources: dict[str, list[str]]
    edits: list[dict[str, Any]] = field(default_factory=list)
    chains: list[dict[str, Any]] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    label: str = ""
    seconds: float | None = None  # a reprinted run's own

    @property
    def live(self) -> LocalEngine:
        assert self.eng is not None, "a reprinted run measures nothing"
        return self.eng

    def prompt(self, window: list[str]) -> list[int]:
        return [self.live.info.bos, *self.live.tokenize_text("".join(window))]

    def exact_state(self, prompt: list[int]) -> bytes:
        """The prompt evaluated on an empty cache (the layout of a fresh run), as a state to restore."""
        self.live.kv.clear()
        prime(self.live, prompt)
        state = self.live.kv.cells.state()
        assert state is not None
        return state

    def restore(self, prompt: list[int], state: bytes) -> None:
        assert self.live.kv.restore(prompt, state), "llama.cpp refused a state it gave"

    def floor_line(self, old: list[int], new: list[int], state: bytes) -> Line:
        """The noise floor: the common prefix kept, the rest evaluated from there, mid-batch (cg's
        exact reuse resumes only on the 128-token grid): the same context as fresh, other float
        rounding. kvcache.prepare is replaced for this one call (it would cut the prefix back to
        the grid)."""
        kv = self.live.kv
        prefix = min(reuse.common_prefix(old, new), len(new) - 1)
        self.restore(old, state)
        if hasattr(kv, "main"):  # the engine on llama.cpp's C API (4cdda15 on): prepare evaluates all but sampling

            def prepare(prompt: list[int], timings: Timings, *_: Any, **__: Any) -> int:
                kv.main.truncate(prefix)
                return int(kv.context.evaluate(kv.main, list(prompt[prefix:])))
        else:  # llama-cpp-python's Llama (dba38f7): its generate() evaluates what follows a restored prefix
            kv.cells.remove(0, prefix, -1)
            cut = kv.cells.state()
            assert cut is not None
            self.restore(new[:prefix], cut)

            def prepare(*_: Any, **__: Any) -> None:
                return None
        saved = kv.prepare
        kv.prepare = prepare  # type: ignore[method-assign]
        try:
            line = complete_line(self.live, new, exact=False)
        finally:
            kv.prepare = saved
        return Line(line.text, len(new) - prefix, False)

    def one_edit(self, rng: random.Random) -> None:
        name, lines, window, target = _window(self.sources, rng, self.args.lines)
        edited, kind, at = _edit(window, rng, lines)
        old, new = self.prompt(window), self.prompt(edited)
        state = self.exact_state(old)
        record: dict[str, Any] = {"module": name, "kind": kind, "at": at, "target": target, "tokens": len(new)}
        for k in self.args.ks:
            self.restore(old, state)
            record[f"K={k}"] = score(spliced_line(self.live, new, k), target)
        # exact reuse of a restored fresh state is bit for bit a fresh run (--check-fresh checks it)
        self.restore(old, state)
        record["fresh"] = score(complete_line(self.live, new, exact=True), target)
        record["floor"] = score(self.floor_line(old, new, state), target)
        if len(self.edits) < self.args.check_fresh:
            self.live.kv.clear()
            record["fresh_cleared"] = complete_line(self.live, new, exact=True).text
            assert record["fresh_cleared"] == record["fresh"]["text"], record
        self.edits.append(record)

    def one_chain(self, rng: random.Random) -> None:
        name, lines, window, target = _window(self.sources, rng, self.args.lines)
        prompts, kinds = [self.prompt(window)], []
        for _ in range(self.args.depth):
            window, kind, _ = _edit(window, rng, lines)
            prompts.append(self.prompt(window))
            kinds.append(kind)
        state = self.exact_state(prompts[0])
        self.restore(prompts[0], state)  # then exact reuse only: each prompt bit for bit a fresh run
        steps: list[dict[str, Any]] = [{"kind": kind, "fresh": score(complete_line(self.live, p, exact=True), target)}
                                       for kind, p in zip(kinds, prompts[1:], strict=True)]
        for k in self.args.ks:
            self.restore(prompts[0], state)
            in_a_row = 0
            for step, p in zip(steps, prompts[1:], strict=True):
                step[f"K={k}"] = scored = score(spliced_line(self.live, p, k), target)
                in_a_row = in_a_row + 1 if scored["spliced"] else 0
                scored["in_a_row"] = in_a_row  # splices of splices so far (0: this one was not spliced)
        self.chains.append({"module": name, "target": target, "steps": steps})

    def arms(self) -> list[str]:
        return ["fresh", *(f"K={k}" for k in self.args.ks), "floor"]

    def results(self) -> dict[str, Any]:
        edit_arms, chain_arms = self.arms(), ["fresh", *(f"K={k}" for k in self.args.ks)]
        by_depth = {d: summarize([c["steps"][d - 1] for c in self.chains], chain_arms)
                    for d in range(1, self.args.depth + 1)}
        seconds = self.seconds if self.seconds is not None else time.perf_counter() - self.started
        return {"model": self.label, "args": {k: v for k, v in vars(self.args).items() if k != "out"},
                "seconds": round(seconds), "modules": MODULES,
                "edits_summary": summarize(self.edits, edit_arms), "chains_summary": by_depth,
                "edits": self.edits, "chains": self.chains}

    def report(self, file: Any) -> dict[str, Any]:
        res = self.results()
        kinds = [e["kind"] for e in self.edits]
        mean_tokens = statistics.mean(e["tokens"] for e in self.edits) if self.edits else 0
        print(f"{len(self.edits)} edits ({', '.join(f'{kinds.count(k)} {k}' for k in ('insert', 'delete', 'change'))})"
              f" in {len({e['module'] for e in self.edits})} standard-library modules, prompts of {mean_tokens:.0f}"
              f" tokens on average, {res['model']}, greedy, the next line; {res['seconds']} s", file=file)
        if self.edits:
            print("\n".join(table(res["edits_summary"], self.arms(), "arm")), file=file)
        for k in self.args.ks if self.chains else []:
            print(f"\n{len(self.chains)} chains of {self.args.depth} edits, K = {k}: each splice from the state the"
                  " last one left; fresh: the same prompts evaluated exactly", file=file)
            print("\n".join(chain_table(res["chains_summary"], f"K={k}")), file=file)
        if self.args.out:
            tmp = self.args.out.with_suffix(".tmp")
            tmp.write_text(json.dumps(res))
            tmp.replace(self.args.out)
        return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--edits", type=int, default=400)
    ap.add_argument("--chains", type=int, default=60)
    ap.add_argument("--depth", type=int, default=6, help="splices in a row per chain")
    ap.add_argument("--ks", type=lambda s: [int(k) for k in s.split(",")], default=[8, 32],
                    help="tokens evaluated again after each splice (reuse.FRESH), comma-separated")
    ap.add_argument("--model", type=Path, help="a GGUF (default: the bundled Gemma 3 270M), e.g. codegemma-2b's")
    ap.add_argument("--lines", type=int, default=40, help="lines of a file in the prompt (about 380 tokens)")
    ap.add_argument("--threads", type=int, default=1,
                    help="1: on 2 cores shared with other jobs, 2 threads ran 3.5x slower (OpenMP waits)")
    ap.add_argument("--check-fresh", type=int, default=0, metavar="N",
                    help="for the first N edits, check the fresh arm against a cleared cache")
    ap.add_argument("--seed", type=int, default=32)
    ap.add_argument("--every", type=int, default=20, help="report and rewrite --out every N edits")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--report", type=Path, metavar="JSON", help="print the tables of a results file again, run nothing")
    args = ap.parse_args()
    if args.report:
        data = json.loads(args.report.read_text())
        args.ks, args.depth, args.out = data["args"]["ks"], data["args"]["depth"], None
        reprint = Run(args, None, {}, data["edits"], data["chains"], label=data["model"], seconds=data["seconds"])
        reprint.report(sys.stdout)
        return
    sources = {m: inspect.getsource(importlib.import_module(m)).splitlines(keepends=True) for m in MODULES}
    eng = local.load(args.model or store.bundled_model_path(), n_ctx=2048, n_threads=args.threads)
    eng.kv.max_splice_depth = max(args.depth, eng.kv.max_splice_depth)  # chains measure every depth, past cg's
    assert eng.kv.can_shift, f"{eng.info.label}'s cache cannot shift (swa_full?): no splice to measure"
    run = Run(args, eng, sources, label=eng.info.label)
    edit_rng, chain_rng = random.Random(args.seed), random.Random(args.seed + 1)  # sizes never shift the other
    for n in range(1, max(args.edits, 1) + 1):
        if n <= args.edits:
            run.one_edit(edit_rng)
        done = min(n, args.edits) / args.edits if args.edits else 1.0
        while len(run.chains) < math.ceil(args.chains * done):
            run.one_chain(chain_rng)
        if n % args.every == 0 and n < args.edits:
            print(f"--- {n} edits, {len(run.chains)} chains, {time.perf_counter() - run.started:.0f} s",
                  file=sys.stderr)
            run.report(sys.stderr)
    run.report(sys.stdout)


if __name__ == "__main__":
    main()
