"""Rule-based rewards: small pure functions dispatched by a record's `data_source` tag.

`judge(data_source, output, answer)` extracts the final answer once (`extract.extract_answer`, the one
extractor) and returns (extracted, correct), so that recorded answers and correctness never disagree;
`is_correct(...)` is its verdict and `reward(...)` maps it to the configured correct/wrong values
(1/0 by default, ±1 allowed). Built-in checkers judge the extracted answer; a checker added with
`register(ds, fn)` gets the raw output (`fn(output, answer, timeout_s=...)`). These are the built-in
`by_data_source` term; the reward a rollout gets, from any terms in the configuration, is `terms.Scorer`'s.
"""

from __future__ import annotations

from typing import Callable

from bridgerl.rewards import math_answer, synthetic
from bridgerl.rewards.extract import extract_answer

_ON_EXTRACTED: dict[str, Callable[..., bool]] = {  # fn(extracted | None, answer, timeout_s)
    "synthetic": synthetic.check,
    "math": math_answer.check,
}
_ON_OUTPUT: dict[str, Callable[..., bool]] = {}  # fn(output, answer, timeout_s=...)


def register(data_source: str, fn: Callable[..., bool]) -> None:
    """Add a checker `fn(output, answer, timeout_s=...) -> bool` for `data_source`."""
    _ON_EXTRACTED.pop(data_source, None)
    _ON_OUTPUT[data_source] = fn


def known_sources() -> list[str]:
    """Data sources with a built-in (or registered) verifier."""
    return sorted({*_ON_EXTRACTED, *_ON_OUTPUT})


def _known() -> str:
    return ", ".join(known_sources())


def checker(data_source: str) -> Callable[..., bool]:
    """`fn(output, answer, timeout_s=...) -> bool` for `data_source`."""
    if data_source in _ON_OUTPUT:
        return _ON_OUTPUT[data_source]
    if data_source in _ON_EXTRACTED:
        return lambda output, answer, timeout_s=5.0: judge(data_source, output, answer, timeout_s)[1]
    raise ValueError(f"data_source = {data_source!r}: no verifier (known: {_known()})")


def judge(data_source: str, output: str, answer: str, timeout_s: float = 5.0) -> tuple[str | None, bool]:
    """(the extracted final answer or None, whether it is correct): one extraction per output."""
    extracted = extract_answer(output or "")
    if data_source in _ON_OUTPUT:
        return extracted, bool(_ON_OUTPUT[data_source](output, answer, timeout_s=timeout_s))
    if data_source in _ON_EXTRACTED:
        return extracted, bool(_ON_EXTRACTED[data_source](extracted, answer, timeout_s))
    raise ValueError(f"data_source = {data_source!r}: no verifier (known: {_known()})")


def is_correct(data_source: str, output: str, answer: str, timeout_s: float = 5.0) -> bool:
    return judge(data_source, output, answer, timeout_s)[1]


def reward(data_source: str, output: str, answer: str, correct: float = 1.0, wrong: float = 0.0,
           timeout_s: float = 5.0) -> float:
    return correct if is_correct(data_source, output, answer, timeout_s) else wrong
