"""The `cg` program's first lines: signals become exceptions before anything heavy is imported,
so a Ctrl-C (or SIGTERM, SIGHUP) at any instant ends cg with its exit code and no traceback."""

from __future__ import annotations

import os
import signal
import sys

from cg.errors import report_signal
from cg_core import interrupts


def run() -> None:
    interrupts.install()
    try:
        from cg.cli import main

        code = main()
        interrupts.check()  # noted inside a C callback that no later check() raised
    except (KeyboardInterrupt, interrupts.Terminated) as exc:  # before main() could take over
        code = report_signal(exc)
    # The work is done (or refused) and said: a signal now changes nothing, and must not kill the
    # interpreter mid-shutdown (it restores the default handlers, which end the process silently).
    signal.pthread_sigmask(signal.SIG_BLOCK, interrupts.HANDLED)
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
