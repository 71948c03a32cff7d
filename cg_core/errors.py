"""The one base of every error cg reports to a user: a message, and a hint for the next step.

cg's errors (cg/errors.py), quantize's (quantize/errors.py) and the few raised here all derive
from it, so an error funnel catches one class and prints `Error: <message>` / `Hint: <hint>`.
"""

from __future__ import annotations


class ReportedError(Exception):
    """A failure to tell the user about: a message, and a hint for the next step."""

    default_hint = ""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = self.default_hint if hint is None else hint


class DiskSpaceError(ReportedError):
    """Not enough room on the disk for what is about to be written (not the input's fault)."""

    default_hint = "Free some disk space or write the output elsewhere (-o, CG_HOME)."


class NotAFileError(ReportedError):
    """A path that is neither a regular file nor something cg can stream to (bad input)."""

    default_hint = "Pass the path of a regular file."
