"""Inference: cg against llama-cpp-python called directly and Hugging Face transformers on CPU.

    python benchmarks/bench_inference.py [--models A.gguf B.gguf ...] [--checkpoint DIR]
        [--tokens 64] [--repeats 3] [--threads N] [--no-transformers]

Defaults: the Q4_K_M and Q8_0 GGUFs and the bf16 checkpoint of codegemma-2b's exact shape that
`bench_quantize.py --keep` leaves in /tmp/cg-bench, plus the bundled Gemma 3 270M.

For each GGUF, a realistic FIM input (about 1,100 prefix and 400 suffix tokens of the standard
library's textwrap.py, counted with the model's tokenizer; prefix only for a model without FIM)
and 64 new tokens, stop tokens banned on both sides so both make all 64:
- in one child process, interleaved: time to first token (= prompt time), prompt tokens/s and
  decode tokens/s of cg's `complete()` and of llama-cpp-python's `Llama.generate` on the same ids;
- one-shot wall time and peak RSS: `cg complete` (prompt cache off) against a minimal script
  that loads the model with llama-cpp-python, evaluates the same ids and prints 64 tokens;
- transformers (torch CPU, bf16 and fp32) on the checkpoint the GGUFs came from: the same prompt
  ids, greedy, KV cache on; its decode is timed over 16 tokens.
Every measure is printed with its ratio to the baseline of the same run. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import WORKDIR, child, fim_input

DIRECT_ONE_SHOT = r'''
import json, sys, llama_cpp
spec = json.load(open(sys.argv[1]))
llm = llama_cpp.Llama(model_path=spec["model"], n_ctx=4096, n_threads=spec["threads"],
                      n_threads_batch=spec["threads"], verbose=False)
ban = spec["stop_ids"]
def no_stops(_ids, logits):
    logits[ban] = -float("inf")
    return logits
out = []
for tok in llm.generate(spec["ids"], temp=0.0, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.0,
                        logits_processor=llama_cpp.LogitsProcessorList([no_stops])):
    out.append(tok)
    if len(out) == spec["tokens"]:
        break
sys.stdout.write(llm.detokenize(out).decode("utf-8", "replace"))
'''


def worker_prepare(model: str, out: Path, threads: int) -> None:
    """Build the input with cg's own tokenizer and prompt builder; write the spec file."""
    from cg.complete import Request
    from cg.engine.local.engine import load
    from cg.prompt.build import fim_prompt, prefix_prompt

    eng = load(model, n_ctx=4096, n_threads=threads)
    prefix, suffix = fim_input(eng.tokenize_text)
    opts = Request(model=model, n_ctx=4096, max_tokens=64, quiet=True)
    fim = eng.special.has_fim
    if not fim:
        prefix, suffix = fim_input(eng.tokenize_text, prefix_tokens=1500, suffix_tokens=0, cursor_at=0.8)
    ids = (fim_prompt(eng, prefix, suffix, opts) if fim else prefix_prompt(eng, prefix, opts)).ids
    out.write_text(json.dumps({"model": model, "prefix": prefix, "suffix": suffix, "ids": ids, "fim": fim,
                               "stop_ids": sorted(eng.special.stop_ids), "threads": threads}))


def worker_inproc(spec_file: Path, tokens: int, repeats: int) -> None:
    import llama_cpp

    from cg.complete import Request, complete
    from cg.engine.local.engine import load

    spec = json.loads(spec_file.read_text())
    t, ban = spec["threads"], spec["stop_ids"]
    llm = llama_cpp.Llama(model_path=spec["model"], n_ctx=4096, n_threads=t, n_threads_batch=t, verbose=False)
    eng = load(spec["model"], n_ctx=4096, n_threads=t)
    opts = Request(model=spec["model"], n_ctx=4096, threads=t, max_tokens=tokens, quiet=True,
                      logit_bias={i: -float("inf") for i in ban})

    def no_stops(_ids, logits):
        logits[ban] = -float("inf")
        return logits

    def direct() -> dict:
        llm.reset()
        start = time.perf_counter()
        first = last = None
        n = 0
        for _tok in llm.generate(spec["ids"], temp=0.0, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.0,
                                 logits_processor=llama_cpp.LogitsProcessorList([no_stops])):
            n += 1
            last = time.perf_counter()
            first = first or last
            if n == tokens:
                break
        return {"ttft": first - start, "decode": (n - 1) / (last - first), "n": n}

    def via_cg() -> dict:
        eng.llm.reset()  # no KV reuse between repeats: each run evaluates the whole prompt
        if spec["fim"]:
            r = complete(spec["prefix"], spec["suffix"], request=opts, engine=eng)
        else:
            from cg.complete import generate

            r = generate(spec["prefix"], request=replace(opts, raw=True), engine=eng)
        assert r.prompt_tokens == len(spec["ids"]), (r.prompt_tokens, len(spec["ids"]))
        return {"ttft": r.timings.prompt_ms / 1000,
                "decode": (r.completion_tokens - 1) / (r.timings.generation_ms / 1000),
                "n": r.completion_tokens}

    rows = {"direct": [], "cg": []}
    for _ in range(repeats):  # interleaved: machine noise hits both alike
        rows["direct"].append(direct())
        rows["cg"].append(via_cg())
    print(json.dumps(rows))


def worker_transformers(checkpoint: str, spec_file: Path, dtype: str, threads: int, tokens: int) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    spec = json.loads(spec_file.read_text())
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=getattr(torch, dtype))
    model.eval()
    ban = torch.tensor(spec["stop_ids"])
    ids = torch.tensor([spec["ids"]])
    with torch.inference_mode():
        start = time.perf_counter()
        out = model(ids, use_cache=True)
        logits = out.logits[:, -1].float()
        logits[:, ban] = -float("inf")
        token = logits.argmax(-1, keepdim=True)
        ttft = time.perf_counter() - start
        past = out.past_key_values
        t0 = time.perf_counter()
        for _ in range(tokens - 1):
            out = model(token, past_key_values=past, use_cache=True)
            past = out.past_key_values
            logits = out.logits[:, -1].float()
            logits[:, ban] = -float("inf")
            token = logits.argmax(-1, keepdim=True)
        decode = (tokens - 1) / (time.perf_counter() - t0)
    print(json.dumps({"ttft": ttft, "decode": decode}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--models", nargs="*", default=None)
    ap.add_argument("--checkpoint", type=Path, default=WORKDIR / "codegemma-2b-shape-18l")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--no-transformers", action="store_true")
    ap.add_argument("--hf-270m", type=Path, default=None,
                    help="a Hugging Face checkpoint of the bundled 270M model, for its transformers baseline "
                         "(make one with: python -c 'from tests.gguf_export import export_checkpoint; ...')")
    args = ap.parse_args()
    if args.worker:
        kind, *rest = args.worker
        if kind == "prepare":
            return worker_prepare(rest[0], Path(rest[1]), args.threads)
        if kind == "inproc":
            return worker_inproc(Path(rest[0]), args.tokens, args.repeats)
        if kind == "transformers":
            return worker_transformers(rest[0], Path(rest[1]), rest[2], args.threads, args.tokens)
        raise SystemExit(f"unknown worker {kind}")

    models = args.models
    if models is None:
        models = [str(WORKDIR / f"codegemma-2b-shape-18l-{q}.gguf") for q in ("q4_k_m", "q8_0")]
        models = [m for m in models if Path(m).exists()]
        where = "from cg.models import store; print(store.bundled_model_path())"
        bundled = child([sys.executable, "-c", where])[2].strip()
        models.append(bundled)
    me = [sys.executable, __file__, "--threads", str(args.threads), "--tokens", str(args.tokens),
          "--repeats", str(args.repeats)]
    med = statistics.median
    print(f"{os.cpu_count()} CPUs, {args.threads} threads, {args.tokens} new tokens, median of {args.repeats}")
    hf_done: set[Path] = set()  # one transformers run per checkpoint
    for model in models:
        spec_file = WORKDIR / f"spec-{Path(model).stem}.json"
        WORKDIR.mkdir(parents=True, exist_ok=True)
        child([*me, "--worker", "prepare", model, str(spec_file)])
        spec = json.loads(spec_file.read_text())
        n_prompt = len(spec["ids"])
        print(f"\n## {Path(model).name}: {n_prompt} prompt tokens ({'FIM' if spec['fim'] else 'prefix only'})")
        rows = json.loads(child([*me, "--worker", "inproc", str(spec_file)])[2])
        d, c = rows["direct"], rows["cg"]
        assert all(r["n"] == args.tokens for r in d + c), "a run stopped early"
        print(f"{'measure':<28}{'direct':>11}{'cg':>11}{'ratio':>8}  target")
        for name, key, fmt, target in (("time to first token s", "ttft", ".2f", ""),
                                       ("prompt tokens/s", "ptps", ".1f", ""),
                                       ("decode tokens/s", "decode", ".2f", ">= 0.97")):
            dv = med(n_prompt / r["ttft"] if key == "ptps" else r[key] for r in d)
            cv = med(n_prompt / r["ttft"] if key == "ptps" else r[key] for r in c)
            print(f"{name:<28}{dv:>11{fmt}}{cv:>11{fmt}}{cv / dv:>8.3f}  {target}")
        spec["tokens"] = args.tokens
        spec_file.write_text(json.dumps(spec))
        direct_spec = WORKDIR / "direct-script.py"
        direct_spec.write_text(DIRECT_ONE_SHOT)
        bias = [a for i in spec["stop_ids"] for a in ("--logit-bias", f"{i}=-inf")]
        cg_cmd = [sys.executable, "-m", "cg", "complete", "-m", model, "-n", str(args.tokens), "-t", str(args.threads),
                  "--ctx", "4096", "-q", *bias, "--prefix", spec["prefix"], "--suffix", spec["suffix"]]
        one = {"direct": [], "cg": []}
        env = {"CG_PROMPT_CACHE": "0", "CG_HOME": str(WORKDIR / "cg-home")}
        for _ in range(args.repeats):
            one["direct"].append(child([sys.executable, str(direct_spec), str(spec_file)]))
            one["cg"].append(child(cg_cmd, env=env))
        dw, cw = med(r[0] for r in one["direct"]), med(r[0] for r in one["cg"])
        dr, cr = max(r[1] for r in one["direct"]), max(r[1] for r in one["cg"])
        print(f"{'one-shot wall s':<28}{dw:>11.2f}{cw:>11.2f}{cw / dw:>8.3f}  <= 1.15")
        print(f"{'one-shot peak RSS MiB':<28}{dr:>11.0f}{cr:>11.0f}{cr / dr:>8.3f}")
        is_shape = Path(model).name.startswith("codegemma-2b-shape")
        checkpoint = args.checkpoint if is_shape else args.hf_270m if "270m" in Path(model).name else None
        if checkpoint and not args.no_transformers and checkpoint.exists() and checkpoint not in hf_done:
            hf_done.add(checkpoint)
            cg_decode = med(r["decode"] for r in c)
            cg_ttft = med(r["ttft"] for r in c)
            print(f"\n## transformers {__import__('importlib.metadata').metadata.version('transformers')} on CPU, "
                  f"{checkpoint.name}, same prompt ids (cg row: {Path(model).name})")
            print(f"{'dtype':<8}{'ttft s':>9}{'decode tok/s':>14}{'peak RSS MiB':>14}"
                  f"{'cg decode x':>13}{'cg ttft x':>11}  target decode >= 5x")
            for dtype in ("bfloat16", "float32"):
                _sec, rss, out = child([*me, "--tokens", "16", "--worker", "transformers", str(checkpoint),
                                       str(spec_file), dtype])
                r = json.loads(out)
                print(f"{dtype:<8}{r['ttft']:>9.1f}{r['decode']:>14.2f}{rss:>14.0f}"
                      f"{cg_decode / r['decode']:>13.1f}{r['ttft'] / cg_ttft:>11.1f}", flush=True)


if __name__ == "__main__":
    main()
