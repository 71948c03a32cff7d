"""Domain errors. `cli.main()` turns each into `Error: ...` + `Hint: ...` and its exit code.

Exit codes (documented in README.md):
  1  a failure that is not the user's input (model failed to run, disk, quantizer)
  2  bad input or usage (missing file, bad option, empty input, prompt too long)
  3  authentication: gated repository, missing token or licence not accepted
  4  not found on the hub (repository, revision or file)
  5  network unreachable
  130 interrupted

Every error shown to a user derives from cg_core's ReportedError: cg's own (here, each with its
exit code), quantize's (a library that never imports cg) and cg_core's; the last two are mapped here.
"""

from __future__ import annotations

import sys

from cg_core import interrupts
from cg_core.errors import DiskSpaceError, NotAFileError, ReportedError
from quantize.errors import ConversionError, OutputExistsError, QuantizeError, QuantizerFailed

__all__ = [
    "AuthError",
    "CgError",
    "ConversionError",
    "DiskSpaceError",
    "HomeError",
    "HubNotFoundError",
    "InputError",
    "ModelFileError",
    "ModelNotFoundError",
    "ModelNotServedError",
    "NetworkError",
    "NoFimError",
    "NotAFileError",
    "OutputExistsError",
    "PromptTooLongError",
    "QuantizeError",
    "QuantizerFailed",
    "ReadOnlyFileError",
    "ReportedError",
    "ServerError",
    "ServerRejectedError",
    "ServerUnreachableError",
    "StaleFileError",
    "ToolMissingError",
    "UnsupportedServerError",
    "UsageError",
    "WriteError",
    "exit_code",
    "report_signal",
]
# quantize's and cg_core's errors -> exit codes: bad input 2, the rest 1.
_OTHER_EXIT = {ConversionError: 2, OutputExistsError: 2, NotAFileError: 2, DiskSpaceError: 1, QuantizerFailed: 1}


class CgError(ReportedError):
    """Base class: a message for the user, a hint for the next step, an exit code."""

    exit_code = 1


class UsageError(CgError):
    exit_code = 2
    default_hint = "Run the command with --help to see its options."


class InputError(CgError):
    """Input the user gave cannot be used (empty, undecodable, out of range)."""

    exit_code = 2


class ModelNotFoundError(CgError):
    exit_code = 2
    default_hint = "Run `cg models` to list installed models, or pass a path to a .gguf file."


class ModelFileError(CgError):
    """The model file exists but is not a loadable GGUF."""

    exit_code = 2
    default_hint = "Re-download or re-convert the model (cg download / cg quantize)."


class PromptTooLongError(CgError):
    exit_code = 2
    default_hint = "Lower --max-tokens, raise --ctx, or pass less context."


class NoFimError(CgError):
    exit_code = 2
    default_hint = "Use a CodeGemma model (cg download codegemma-2b) or drop --require-fim."


class HomeError(CgError):
    """cg's home folder or a file in it cannot be used."""

    exit_code = 2


class AuthError(CgError):
    exit_code = 3


class HubNotFoundError(CgError):
    exit_code = 4


class NetworkError(CgError):
    exit_code = 5
    default_hint = "Check your connection, or set HF_HUB_OFFLINE=1 to use what is cached."


class StaleFileError(CgError):
    exit_code = 1
    default_hint = "The file changed while cg was working; run the command again."


class ReadOnlyFileError(CgError):
    exit_code = 2
    default_hint = "Make it writable (chmod u+w), or pass --force to replace it anyway."


class WriteError(CgError):
    """Writing files failed part-way; the message names what was and was not replaced."""

    exit_code = 1


class ServerError(CgError):
    """The server failed or dropped the stream: not the input's fault."""

    exit_code = 1
    default_hint = "Check the server's log; run the command again once it is healthy."


class ServerRejectedError(ServerError):
    """A 4xx answer: the server does not take the request as cg sends it."""

    default_hint = "Check the server's log for why it rejected the request."


class ServerUnreachableError(CgError):
    exit_code = 5
    default_hint = "Check that the server runs (cg serve starts one) and the URL and port."


class UnsupportedServerError(CgError):
    """A server cg refuses to drive: it would get FIM prompts or stops wrong."""

    exit_code = 2


class ModelNotServedError(CgError):
    exit_code = 4


class ToolMissingError(CgError):
    """A program cg runs (llama-server) is not installed."""

    exit_code = 2


def exit_code(exc: ReportedError) -> int:
    if isinstance(exc, CgError):
        return exc.exit_code
    return next((code for cls, code in _OTHER_EXIT.items() if isinstance(exc, cls)), 1)


def report_signal(exc: BaseException) -> int:
    """`Error: interrupted` (terminated, hung up) on stderr; the exit code a shell expects."""
    what = {143: "terminated (SIGTERM)", 129: "hung up (SIGHUP)"}.get(interrupts.exit_code(exc), "interrupted")
    try:
        print(f"Error: {what}", file=sys.stderr)
    except (OSError, ValueError):
        pass
    return interrupts.exit_code(exc)
