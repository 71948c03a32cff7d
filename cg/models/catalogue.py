"""The CodeGemma models cg knows by name: where each is on the hub and what it is for. One place
for these facts: `cg download` fetches them, the store ranks them, the help lists them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Known:
    name: str
    repo: str
    size: str  # parameters
    kind: str  # what its prompts are: FIM, or chat turns
    use: str


MODELS = (
    Known("codegemma-2b", "google/codegemma-2b", "2B", "FIM", "fast completion in the editor and hooks (the default)"),
    Known("codegemma-1.1-2b", "google/codegemma-1.1-2b", "2B", "FIM", "the 2B retrained (v1.1): as fast"),
    Known("codegemma-7b", "google/codegemma-7b", "7B", "FIM + generation", "better multi-line completion, slower"),
    Known("codegemma-7b-it", "google/codegemma-7b-it", "7B", "chat", "cg generate from instructions; poor at FIM"),
    Known("codegemma-1.1-7b-it", "google/codegemma-1.1-7b-it", "7B", "chat", "the instruction model, v1.1"),
)
BY_NAME = {m.name: m for m in MODELS}
DEFAULT = "codegemma-2b"
# The default when none is chosen: FIM-trained base models first (the -it models are poor at
# FIM), newer before older, bigger before smaller.
PREFERENCE = ("codegemma-7b", "codegemma-1.1-2b", "codegemma-2b", "codegemma-1.1-7b-it", "codegemma-7b-it")


def family(installed_name: str) -> str | None:
    """The known model an installed name belongs to: the longest it starts with
    (codegemma-7b-it-q4_k_m is codegemma-7b-it, not codegemma-7b)."""
    matches = [m.name for m in MODELS if installed_name == m.name or installed_name.startswith(m.name + "-")]
    return max(matches, key=len) if matches else None
