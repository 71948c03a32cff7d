"""A second completion costs only what changed: prompt tokens evaluated and wall time per step, at
codegemma-2b's shape on this machine, against cg before this work and llama-server's /infill.

    python benchmarks/bench_reuse.py [--model 2b-shape-q4_k_m.gguf] [--baseline REV] [--llama-server PATH]
    python benchmarks/bench_reuse.py --bounds     # only what no reuse can avoid (the tokenizer, seconds)

The file is the standard library's textwrap.py + argparse.py (3,124 lines). Each step is one
`cg complete --json -n 8` process (the on-disk prompt cache on, one cg home for the steps):
  1. first infill at line 1500     2. cursor 2 lines down       3. cursor 12 lines up
  4. one line inserted above the cursor                         5. cursor 100 lines down
then 6. five `# cg: fill` markers in one file, one `cg infill --write` (a fresh home each).
Columns: cg now --splice, cg now --exact, cg at REV (a git worktree of the commit before this
work, the same venv), and llama-server --cache-reuse 256 (/infill, one slot, a 2048-token
context). Stops are banned so every run generates its 8 tokens. The last two columns compare each
step's text with a fresh run of the same prompt (no prompt cache, a new process). Not a test.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import ROOT, WORKDIR

STOPS = (1, 67, 68, 69, 70, 107)
BAN = [a for t in STOPS for a in ("--logit-bias", f"{t}=-1000")]
LINE = 1500


def source_lines() -> list[str]:
    text = Path(inspect.getsourcefile(textwrap)).read_text() + Path(inspect.getsourcefile(argparse)).read_text()
    return text.splitlines(keepends=True)


def steps(lines: list[str]) -> list[tuple[str, list[str], int]]:
    """(name, file lines, cursor line index: the cursor sits at that line's start)."""
    inserted = [*lines[: LINE - 15], "        # a line inserted above the cursor\n", *lines[LINE - 15:]]
    return [("first infill at line 1500", lines, LINE), ("cursor 2 lines down", lines, LINE + 2),
            ("cursor 12 lines up", lines, LINE - 10), ("one line inserted above the cursor", inserted, LINE - 9),
            ("cursor 100 lines down", inserted, LINE + 91)]


def cg_step(python_path: Path, model: str, home: Path, lines: list[str], cursor: int, extra: list[str],
            env_extra: dict[str, str] | None = None) -> tuple[int, float, str]:
    """(prompt tokens evaluated, wall s, the completion's text)"""
    text = "".join(lines[:cursor]) + "<CURSOR>" + "".join(lines[cursor:])
    env = {**os.environ, "PYTHONPATH": str(python_path), "CG_HOME": str(home), **(env_extra or {})}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "cg", "complete", "-m", model, "--json", "-n", "8", "--path",
                           "stdlib.py", "--no-block-stop", *BAN, *extra], input=text, capture_output=True, text=True,
                          env=env, cwd=python_path, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    data = json.loads(proc.stdout)
    t = data["timings"]
    evaluated = t.get("evaluated_tokens")
    return (evaluated if evaluated is not None else data["prompt_tokens"] - t["cached_tokens"]), wall, data["text"]


def marker_fill(python_path: Path, model: str, lines: list[str], extra: list[str]) -> float:
    with tempfile.TemporaryDirectory() as folder:
        f = Path(folder) / "many.py"
        f.write_text("".join(marked_lines(lines)))
        env = {**os.environ, "PYTHONPATH": str(python_path), "CG_HOME": str(Path(folder) / "home")}
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "cg", "infill", str(f), "--write", "-m", model, "-n", "8",
                               "--no-block-stop", *BAN, *extra], capture_output=True, text=True, env=env,
                              cwd=python_path, check=False)
        if proc.returncode != 0:
            raise SystemExit(proc.stderr)
        return time.perf_counter() - start


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def marked_lines(lines: list[str]) -> list[str]:
    marked = list(lines)
    for at in (LINE + 120, LINE + 90, LINE + 60, LINE + 30, LINE):  # five markers, 30 lines apart
        marked.insert(at, f"{_indent(marked[at])}# cg: fill\n")
    return marked


def bounds(model: str, lines: list[str], plan: list[tuple[str, list[str], int]]) -> None:
    """What no reuse can avoid: the tokens of the lines in a step's window that no window before
    it held (cg's own stable windows, this model's tokenizer). A line-level bound: repeated code
    can match elsewhere, and each splice evaluates reuse.FRESH tokens again on top."""
    from cg.engine.local import engine as local
    from cg.prompt import fim
    from cg.prompt.build import prompt_budget
    from cg.request import Request

    eng = local.load(model, n_ctx=4096, n_threads=1)
    count = lambda text: len(eng.tokenize_text(text))  # noqa: E731
    header = len(eng.tokenize_text("stdlib.py\n"))
    budget, _ = prompt_budget(eng, Request(quiet=True), 4 + header)

    def window(file: list[str], cursor: int) -> range:
        kept_prefix, kept_suffix = fim.stable_window("".join(file[:cursor]), "".join(file[cursor:]), budget, count)
        return range(cursor - kept_prefix.count("\n"), cursor + kept_suffix.count("\n"))

    print("Bounds (line level): a step's window, the lines no earlier window held, their tokens")
    print("| step | window lines | new lines | their tokens |")
    print("|---|---|---|---|")

    def origin(file: list[str], i: int) -> int | None:
        """A line's index in the unedited file (None: the inserted line)."""
        return i if file is lines or i < LINE - 15 else None if i == LINE - 15 else i - 1

    seen: set[int | None] = set()
    for name, file, cursor in plan:
        span = window(file, cursor)
        new = [i for i in span if origin(file, i) not in seen]
        print(f"| {name} | {span.start + 1}-{span.stop} | {len(new)} | {sum(count(file[i]) for i in new)} |")
        seen |= {origin(file, i) for i in span} - {None}
    marked, previous, total = marked_lines(lines), set(), 0
    for row in reversed([i for i, line in enumerate(marked) if line.strip() == "# cg: fill"]):
        marked[row] = _indent(marked[row]) + "\n"  # filled (random weights: with nothing)
        span = set(window(marked, row))
        total += sum(count(marked[i]) for i in span - previous)
        previous = span
    print(f"| 5 markers (bottom-up, each against the window before) | | | {total} in all: at best "
          f"{5 * 2048 / total:.2f}x fewer than 5 x 2048 |")
    eng.llm.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_steps(binary: str, model: str, threads: int, plan: list[tuple[str, list[str], int]]) -> list[int]:
    port = free_port()
    # /infill's prompt is llama-server's own window (n_batch 2048 of text) plus its sentinels
    proc = subprocess.Popen([binary, "-m", model, "-c", "2560", "-np", "1", "-t", str(threads), "--cache-reuse",
                             "256", "--host", "127.0.0.1", "--port", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                with urllib.request.urlopen(url + "/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        out = []
        for _name, lines, cursor in plan:
            body = {"input_prefix": "".join(lines[:cursor]), "input_suffix": "".join(lines[cursor:]), "n_predict": 8,
                    "cache_prompt": True, "temperature": 0, "logit_bias": [[t, -1000] for t in STOPS]}
            req = urllib.request.Request(url + "/infill", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=3600) as resp:
                    out.append(int(json.loads(resp.read())["timings"]["prompt_n"]))
            except urllib.error.HTTPError as exc:
                raise SystemExit(f"llama-server refused /infill: {exc.read()[:300]!r}") from None
        return out
    finally:
        os.killpg(proc.pid, 15)
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(WORKDIR / "codegemma-2b-shape-18l-q4_k_m.gguf"))
    ap.add_argument("--baseline", default="dcd8c2c", help="the commit cg is compared with")
    ap.add_argument("--llama-server", default=os.environ.get("CG_LLAMA_SERVER") or shutil.which("llama-server"))
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--columns", type=Path, help="JSON {label: [[evaluated, wall, text], ...]} of cg columns an "
                                                 "earlier run printed on stderr: those are not measured again")
    ap.add_argument("--bounds", action="store_true", help="only the line-level bounds (the tokenizer, no timing)")
    args = ap.parse_args()
    lines = source_lines()
    plan = steps(lines)
    if args.bounds:
        bounds(args.model, lines, plan)
        return
    baseline = Path(tempfile.mkdtemp(prefix="cg-baseline-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(baseline), args.baseline], check=True,
                   capture_output=True)
    try:
        columns: dict[str, list[tuple[int, float, str]]] = json.loads(args.columns.read_text()) if args.columns else {}
        for label, path, extra in (("cg", ROOT, ["--splice"]), ("cg --exact", ROOT, ["--exact"]),
                                   (f"cg at {args.baseline}", baseline, [])):
            if label in columns:
                continue
            home = Path(tempfile.mkdtemp(prefix="cg-home-"))
            columns[label] = [cg_step(path, args.model, home, step_lines, cursor, extra)
                              for _, step_lines, cursor in plan]
            shutil.rmtree(home, ignore_errors=True)
            print(f"{label}: {columns[label]}", file=sys.stderr)
        with tempfile.TemporaryDirectory() as home:  # each step fresh: no prompt cache, a new process
            fresh = [cg_step(ROOT, args.model, Path(home), step_lines, cursor, ["--exact"], {"CG_PROMPT_CACHE": "0"})
                     for _, step_lines, cursor in plan]
        print(f"fresh: {fresh}", file=sys.stderr)
        served = server_steps(args.llama_server, args.model, args.threads, plan) if args.llama_server else []
        print(f"llama-server: {served}", file=sys.stderr)
        fills = {"cg": marker_fill(ROOT, args.model, lines, ["--splice"]),
                 "cg --exact": marker_fill(ROOT, args.model, lines, ["--exact"]),
                 f"cg at {args.baseline}": marker_fill(baseline, args.model, lines, [])}
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(baseline)], capture_output=True,
                       check=False)
    before = f"cg at {args.baseline}"
    print(f"Model {Path(args.model).name}, {args.threads} threads; tokens evaluated (wall s)")
    print("| step | cg --splice | cg --exact | " + before + " | llama-server /infill --cache-reuse 256 | "
          "cg --splice wall / before | --exact output = fresh | --splice output = fresh |")
    print("|---|---|---|---|---|---|---|---|")
    for i, (name, _, _) in enumerate(plan):
        row = [f"{columns[c][i][0]} ({columns[c][i][1]:.1f} s)" for c in ("cg", "cg --exact", before)]
        srv = str(served[i]) if served else "-"
        same = ["yes" if columns[c][i][2] == fresh[i][2] else "no" for c in ("cg --exact", "cg")]
        print(f"| {name} | {' | '.join(row)} | {srv} | {columns['cg'][i][1] / columns[before][i][1]:.2f} | "
              f"{' | '.join(same)} |")
    print(f"| 5 markers, one cg infill --write | {fills['cg']:.1f} s | {fills['cg --exact']:.1f} s | "
          f"{fills[before]:.1f} s | | {fills['cg'] / fills[before]:.2f} (speed-ups: --splice "
          f"{fills[before] / fills['cg']:.2f}x, --exact {fills[before] / fills['cg --exact']:.2f}x) | | |")
    print()
    bounds(args.model, lines, plan)


if __name__ == "__main__":
    main()
