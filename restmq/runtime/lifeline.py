"""Tie a child process's life to its parent's: it gets a signal when the parent dies.

Used by the embedded Valkey's launcher and by the worker processes of ``--workers``,
so that even a SIGKILLed broker leaves nothing running behind it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1
#: The environment variable in which a parent gives its child its pid (for die_with_parent).
PARENT_PID_VARIABLE = "RESTMQ_PARENT_PID"


def die_with_parent(parent_pid: int, sig: int = signal.SIGTERM) -> None:
    """Ask Linux for ``sig`` when the parent dies, even by SIGKILL; elsewhere do nothing.

    Exits at once when the parent died before the request took effect.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:
        raise SystemExit(1)
