"""python -m quantize SRC_DIR [-o OUT.gguf] [--type T]: the converter without cg's model store.

`cg quantize` is the same conversion, registered in cg's store; this entry point is for using
the converter as a library tool on its own.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cg_core.errors import NotAFileError, ReportedError

from .errors import ConversionError, OutputExistsError
from .llama_quant import TYPE_NAMES

# Bad input (as cg's table): 2; everything else: 1.
_INPUT_ERRORS = (ConversionError, OutputExistsError, NotAFileError)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quantize", description=__doc__.splitlines()[0])
    parser.add_argument("src_dir", type=Path, help="Hugging Face checkpoint folder")
    parser.add_argument("-o", "--output", type=Path, help="output .gguf (default: ./FOLDER-TYPE.gguf)")
    parser.add_argument("--type", default="q4_k_m", choices=TYPE_NAMES)
    parser.add_argument("--force", action="store_true", help="overwrite an existing output")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    from .convert import convert

    out = args.output or Path(f"{args.src_dir.resolve().name.lower()}-{args.type}.gguf")
    try:
        result = convert(args.src_dir, out, type=args.type, force=args.force, threads=args.threads)
    except ReportedError as exc:
        print(f"Error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"Hint: {exc.hint}", file=sys.stderr)
        return 2 if isinstance(exc, _INPUT_ERRORS) else 1
    except KeyboardInterrupt:
        print("Error: interrupted", file=sys.stderr)
        return 130
    print(result.path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
