"""cg vs llama-cpp-python called directly, same GGUF, tokens, threads and greedy settings.

Prints decode tokens/s (in-process) and one-shot wall time (process start to exit), each as a
ratio to the direct baseline measured in the same run. Targets: decode >= 0.97x, one-shot
<= 1.15x. Not a test: run by hand.

    python benchmarks/bench_complete.py [--model PATH] [--tokens 64] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PREFIX = ("import os\nimport sys\n\n\ndef list_python_files(folder):\n"
          "    \"\"\"Return the .py files under folder.\"\"\"\n")
DIRECT = r'''
import sys, llama_cpp
path, n, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
llm = llama_cpp.Llama(model_path=path, n_ctx=4096, n_threads=threads, n_threads_batch=threads, verbose=False)
prompt = [llm.token_bos(), *llm.tokenize(sys.stdin.read().encode(), add_bos=False)]
out = []
for i, tok in enumerate(llm.generate(prompt, temp=0.0, repeat_penalty=1.0)):
    out.append(tok)
    if i + 1 == n:
        break
sys.stdout.write(llm.detokenize(out).decode("utf-8", "replace"))
'''


def decode_direct(path: str, prompt_text: str, n: int, threads: int) -> float:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=path, n_ctx=4096, n_threads=threads, n_threads_batch=threads, verbose=False)
    prompt = [llm.token_bos(), *llm.tokenize(prompt_text.encode(), add_bos=False)]
    start = None
    for i, _tok in enumerate(llm.generate(prompt, temp=0.0, repeat_penalty=1.0)):
        if start is None:
            start = time.perf_counter()
        if i + 1 == n:
            break
    rate = (n - 1) / (time.perf_counter() - start)
    llm.close()
    return rate


def decode_cg(path: str, prompt_text: str, n: int, threads: int) -> float:
    from cg.engine import Sampling, Timings
    from cg.engine.local.engine import load

    eng = load(path, n_ctx=4096, n_threads=threads)
    prompt = [eng.info.bos, *eng.tokenize_text(prompt_text)]
    start = None
    count = 0
    for _piece in eng.generate(prompt, max_tokens=n, sampling=Sampling(), logit_bias=None, logits_processor=None,
                               timings=Timings(), on_prompt=None, exact=True):  # no stop: n tokens
        count += 1
        if start is None:
            start = time.perf_counter()
    assert start is not None
    rate = (count - 1) / (time.perf_counter() - start)
    eng.llm.close()
    return rate


def wall(cmd: list[str], stdin: str) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, input=stdin, capture_output=True, text=True, check=True)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="GGUF (default: the bundled Gemma 3 270M)")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    if args.model is None:
        from cg.models import store

        args.model = str(store.bundled_model_path())
    n, t = args.tokens, args.threads

    direct_rates, cg_rates = [], []
    for _ in range(args.repeats):  # interleaved so machine noise hits both alike
        direct_rates.append(decode_direct(args.model, PREFIX, n, t))
        cg_rates.append(decode_cg(args.model, PREFIX, n, t))

    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(DIRECT)
        script = f.name
    direct_cmd = [sys.executable, script, args.model, str(n), str(t)]
    # Prefix-only continuation on both sides for the bundled model (it has no FIM tokens); -q
    # keeps cg's warning off; --logit-bias keeps both running to exactly n tokens is not needed
    # for greedy runs that do not stop early on this prompt.
    cg_cmd = [sys.executable, "-m", "cg", "complete", "-m", args.model, "-n", str(n), "-t", str(t), "-q"]
    direct_wall, cg_wall = [], []
    for _ in range(args.repeats):
        direct_wall.append(wall(direct_cmd, PREFIX))
        cg_wall.append(wall(cg_cmd, PREFIX))
    os.unlink(script)

    med = statistics.median
    print(f"model: {Path(args.model).name}  tokens: {n}  threads: {t}  repeats: {args.repeats}")
    print(f"{'measure':<28}{'direct':>12}{'cg':>12}{'ratio':>10}  target")
    print(f"{'decode tokens/s (median)':<28}{med(direct_rates):>12.1f}{med(cg_rates):>12.1f}"
          f"{med(cg_rates) / med(direct_rates):>10.3f}  >= 0.97")
    print(f"{'one-shot wall s (median)':<28}{med(direct_wall):>12.3f}{med(cg_wall):>12.3f}"
          f"{med(cg_wall) / med(direct_wall):>10.3f}  <= 1.15")


if __name__ == "__main__":
    main()
