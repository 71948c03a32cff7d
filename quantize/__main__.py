"""python -m quantize SRC_DIR ...: the same as `cg quantize`."""

import sys

from cg.cli import main

sys.exit(main(["quantize", *sys.argv[1:]]))
