"""Stdout carries only a command's result (JSON or one line); everything else goes to stderr."""

from __future__ import annotations

import contextlib
import json
import os
import sys

_results = sys.stdout


def emit(obj) -> None:
    """The command's result on stdout (JSON or one line), nothing else there."""
    text = obj if isinstance(obj, str) else json.dumps(obj)
    _results.write(text + "\n")
    _results.flush()


@contextlib.contextmanager
def stdout_for_results():
    """Point file descriptor 1 at stderr for everything (libraries' print()s and loggers bound to
    sys.stdout, native code, subprocesses) and keep a private handle on the real stdout for `emit`."""
    global _results
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    _results = os.fdopen(os.dup(saved), "w")
    try:
        yield
    finally:
        sys.stdout.flush()
        _results.close()
        _results = sys.stdout
        os.dup2(saved, 1)
        os.close(saved)
