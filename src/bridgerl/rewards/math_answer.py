"""Math answers verified with math-verify (symbolic equivalence), with a per-item timeout.

The final answer is extracted from the output (`extract.extract_answer`), both it and the gold
answer are cleaned of formatting (`extract.clean_answer`), and equal strings count as correct
at once. Everything else goes to math-verify in a guarded worker process (`guard.GuardedCall`):
an item that overruns `timeout_s` counts as wrong and can never hang the caller, in any thread.
"""

from __future__ import annotations

import logging

from bridgerl.rewards import guard
from bridgerl.rewards.extract import clean_answer, extract_answer

log = logging.getLogger(__name__)
_WORKER = guard.GuardedCall("bridgerl.rewards.math_answer:verify_strings_untimed")
_fallback_warned = False


def _as_latex(ans: str) -> str:
    return f"$\\boxed{{{ans}}}$"


def verify_strings_untimed(gold: str, pred: str) -> bool:
    """math-verify on two cleaned answer strings, with no timeout of its own (callers time it)."""
    from math_verify import parse, verify

    g = parse(_as_latex(gold), parsing_timeout=None)
    p = parse(_as_latex(pred), parsing_timeout=None)
    if not g or not p:
        return False
    return bool(verify(g, p, timeout_seconds=None))


def verify_strings(gold: str, pred: str, timeout_s: float = 5.0, shortcut: bool = True) -> bool:
    """Whether the answer string `pred` is mathematically equal to `gold` (both cleaned here)."""
    global _fallback_warned
    gold, pred = clean_answer(gold), clean_answer(pred)
    if not pred:
        return False
    if shortcut and gold == pred:
        return True
    try:
        result = _WORKER(gold, pred, timeout_s=timeout_s)
    except (RuntimeError, OSError) as e:  # no worker process possible here
        if not _fallback_warned:
            log.warning("verification worker unavailable (%s); verifying in-process", e)
            _fallback_warned = True
        result = guard.in_process(verify_strings_untimed, gold, pred, timeout_s=timeout_s)
    return bool(result)


def check(pred: str | None, answer: str, timeout_s: float = 5.0) -> bool:
    """Whether an already extracted answer verifies against the gold answer."""
    if pred is None:
        return False
    return verify_strings(str(answer), pred, timeout_s)


def is_correct(output: str, answer: str, timeout_s: float = 5.0) -> bool:
    """Whether the final answer in a model output verifies against the gold answer."""
    return check(extract_answer(output or ""), answer, timeout_s)
