"""Conversion and quantization cost at codegemma-2b's shape (random weights: values do not
change the cost), against llama.cpp's own convert_hf_to_gguf.py in the same run.

    python benchmarks/bench_quantize.py [--layers 18] [--dtype BF16] [--workdir /tmp/cg-bench]
        [--llama-cpp DIR] [--types f16,q8_0,q4_k_m] [--keep]

Each conversion runs in a child process; its time and peak RSS (wait4) are reported. With
--llama-cpp (a llama.cpp source tree, e.g. vendor/llama.cpp of the llama-cpp-python sdist; needs
`pip install '.[bench]'` for torch) its converter writes the same float outputs, and every
tensor is compared byte for byte with cg's. --keep leaves the q8_0 / q4_k_m GGUFs in the workdir
for bench_inference.py. --layers below 18 keeps codegemma-2b's tensor shapes with fewer blocks.
Not a test: run by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import child

CG_CHILD = ("import sys; from quantize.convert import convert; "
            "convert(sys.argv[1], sys.argv[2], type=sys.argv[3], force=True)")


def compare_tensors(a: Path, b: Path) -> tuple[int, int, list[str]]:
    """(identical, total, differing names): tensor type, shape and bytes."""
    from gguf import GGUFReader

    ta = {t.name: t for t in GGUFReader(a).tensors}
    tb = {t.name: t for t in GGUFReader(b).tensors}
    names = sorted(set(ta) | set(tb))
    differ = [n for n in names if n not in ta or n not in tb or ta[n].tensor_type != tb[n].tensor_type
              or list(ta[n].shape) != list(tb[n].shape) or ta[n].data.tobytes() != tb[n].data.tobytes()]
    return len(names) - len(differ), len(names), differ


def main() -> None:
    from tests.synthetic import CODEGEMMA_2B

    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=CODEGEMMA_2B.layers)
    ap.add_argument("--dtype", default="BF16", choices=["BF16", "F32"])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/cg-bench"))
    ap.add_argument("--llama-cpp", type=Path, default=None, help="llama.cpp source tree (for convert_hf_to_gguf.py)")
    ap.add_argument("--types", default="f16,q8_0,q4_k_m")
    ap.add_argument("--keep", action="store_true", help="keep the quantized outputs (for bench_inference.py)")
    args = ap.parse_args()
    src = args.workdir / f"codegemma-2b-shape-{args.layers}l"
    if not (src / "config.json").exists():
        # In a child: a child's peak RSS counts its parent's at fork/exec time on Linux, so
        # this process must stay small for the measurements below to mean anything.
        code = ("import sys, dataclasses; from pathlib import Path; from tests.synthetic import CODEGEMMA_2B, "
                "write_checkpoint; write_checkpoint(Path(sys.argv[1]), dataclasses.replace(CODEGEMMA_2B, "
                "layers=int(sys.argv[2])), dtype=sys.argv[3], shards=2, scale=1.0)")
        sec, _, _ = child([sys.executable, "-c", code, str(src), str(args.layers), args.dtype])
        print(f"wrote random checkpoint in {sec:.1f} s", file=sys.stderr)
    size = sum(f.stat().st_size for f in src.glob("*.safetensors"))
    print(f"checkpoint: {src.name}, {size / 2**30:.2f} GiB {args.dtype}, layers {args.layers}, "
          f"{os.cpu_count()} CPUs")
    print(f"{'output':<22}{'seconds':>9}{'peak RSS MiB':>14}{'file MiB':>10}")
    rows = {}
    for qtype in args.types.split(","):
        out = args.workdir / f"codegemma-2b-shape-{args.layers}l-{qtype}.gguf"
        sec, rss, _ = child([sys.executable, "-c", CG_CHILD, str(src), str(out), qtype])
        rows[qtype] = (sec, rss)
        print(f"{'cg ' + qtype:<22}{sec:>9.1f}{rss:>14.0f}{out.stat().st_size / 2**20:>10.0f}", flush=True)
        if args.llama_cpp and qtype in ("f16", "f32"):
            ref = args.workdir / f"llama-cpp-{qtype}.gguf"
            lsec, lrss, _ = child([sys.executable, "convert_hf_to_gguf.py", str(src), "--outtype", qtype,
                                   "--outfile", str(ref)], cwd=args.llama_cpp)
            print(f"{'llama.cpp ' + qtype:<22}{lsec:>9.1f}{lrss:>14.0f}{ref.stat().st_size / 2**20:>10.0f}")
            # In a child too: reading two multi-GiB files would raise this process's RSS.
            code = ("import sys, json; sys.path.insert(0, sys.argv[3]); from bench_quantize import compare_tensors; "
                    "print(json.dumps(compare_tensors(sys.argv[1], sys.argv[2])))")
            same, total, differ = json.loads(child([sys.executable, "-c", code, str(out), str(ref),
                                                    str(Path(__file__).parent)])[2])
            print(f"  tensors identical: {same}/{total}" + (f"  differ: {', '.join(differ[:5])}" if differ else ""))
            print(f"  cg/llama.cpp: time {sec / lsec:.2f}x (target <= 1), peak RSS {rss / lrss:.2f}x (target <= 0.5)",
                  flush=True)
            ref.unlink()
        if not (args.keep and qtype not in ("f16", "f32")):
            out.unlink()


if __name__ == "__main__":
    main()
