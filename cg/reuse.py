"""Which already-computed prompt tokens a new prompt can reuse: pure functions on token lists.

The exact rule: reuse a common prefix, cut back to a whole physical batch (llama.cpp's n_ubatch).
llama.cpp evaluates a prompt in chunks of n_ubatch tokens from position 0; resuming at a chunk
boundary makes the rest evaluate in exactly the chunks a fresh run uses, so the logits, and the
greedy output, are bit for bit those of a run without reuse (a split elsewhere changes float
rounding enough to flip a close choice now and then). The last prompt token is always evaluated,
as it is the one whose logits are sampled.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import TypeAlias

    import numpy as np

    Tokens: TypeAlias = Sequence[int] | np.ndarray


def common_prefix(a: Tokens, b: Tokens) -> int:
    import numpy as np

    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(np.asarray(a[:n], dtype=np.int64) != np.asarray(b[:n], dtype=np.int64))
    return int(diff[0]) if diff.size else n


def aligned(common: int, prompt_len: int, ubatch: int) -> int:
    """The exact rule: whole physical batches of the common prefix, never the last prompt token."""
    return (min(common, prompt_len - 1) // ubatch) * ubatch if prompt_len > 0 else 0


def exact_prefix(cached: Tokens, prompt: Tokens, ubatch: int) -> int:
    """Prompt tokens reusable bit for bit from a cache holding `cached`."""
    return aligned(common_prefix(cached, prompt), len(prompt), ubatch)
