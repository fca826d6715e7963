"""Exact checker for the embedded arithmetic task: the extracted answer must equal the integer answer.

The answer is taken by the shared extractor (`extract.extract_answer`: boxed, else "answer is X", else
the last number), so a plain "2" or "The answer is 2" counts as the math checker would count it; the
value is compared exactly as a rational number ("2", "2.0", "4/2", "2,000" are integers); an equation's
right-hand side is the answer ("5 - 3 = 2", "x = 2": small models box the whole equation).
"""

from __future__ import annotations

from fractions import Fraction

from bridgerl.rewards.extract import clean_answer, extract_answer


def check(pred: str | None, answer: str, timeout_s: float = 5.0) -> bool:
    """Whether an already extracted answer equals the integer gold answer."""
    if not pred:
        return False
    try:
        value = clean_answer(pred).rsplit("=", 1)[-1]
        return Fraction(value.replace(",", "").replace(" ", "")) == int(str(answer).strip())
    except (ValueError, ZeroDivisionError):
        return False


def is_correct(output: str, answer: str, timeout_s: float = 5.0) -> bool:
    return check(extract_answer(output or ""), answer, timeout_s)
