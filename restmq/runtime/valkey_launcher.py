"""Exec the Valkey server so that it can never outlive the broker.

Run as ``python -m restmq.runtime.valkey_launcher VALKEY-BINARY ARGS...`` by
``restmq.runtime.embedded_valkey``. Before it becomes the server it

- asks Linux to send it SIGTERM when its parent (the broker) dies, even by
  SIGKILL (``PR_SET_PDEATHSIG`` survives exec), so the server flushes its
  append-only file and exits;
- leaves the terminal's process group, so a Ctrl-C meant for the broker does
  not stop the server under it: the broker stops the server itself, last.

On systems without ``prctl`` the broker reaps a leftover server at its next start.
"""

from __future__ import annotations

import os
import sys

from restmq.runtime.lifeline import PARENT_PID_VARIABLE, die_with_parent


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise SystemExit("usage: python -m restmq.runtime.valkey_launcher VALKEY-BINARY [ARGS...]")
    parent = int(os.environ.pop(PARENT_PID_VARIABLE, os.getppid()))
    die_with_parent(parent)
    os.setpgid(0, 0)
    os.execv(argv[1], argv[1:])


if __name__ == "__main__":
    main(sys.argv)
