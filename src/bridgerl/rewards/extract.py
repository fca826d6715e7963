"""Final-answer extraction from a model output, and the cleaning applied to answers before verifying.

`extract_answer` takes the last `\\boxed{...}` / `\\fbox{...}` (nested and escaped braces handled);
without a box it falls back to "the (final) answer is X" and then to the last number in the text.
`clean_answer` strips what is formatting rather than mathematics (`$` delimiters, a trailing period,
thousands separators) so that gold and predicted answers are compared on the same footing.
"""

from __future__ import annotations

import re

_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BOX_BARE = re.compile(r"\\boxed\s+([^\s${}]+)")  # \boxed 5
_ANSWER_IS = re.compile(
    r"(?:final answer|the answer|answer)\s*(?:is|:|=)\s*:?\s*(.+?)\s*(?:\.\s|\.$|\n|$)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")
_THOUSANDS = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")


def _closing(text: str, start: int) -> int | None:
    """Index of the brace closing the group opened just before `start`; `\\{`, `\\}` are skipped."""
    depth, i, n = 1, start, len(text)
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n and text[i + 1] in "{}":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last closed \\boxed{...} (or \\fbox{...}, or `\\boxed 5`); None if there is none."""
    found: tuple[int, str] | None = None
    for m in _BOX.finditer(text):
        end = _closing(text, m.end())
        if end is not None:
            found = (m.start(), text[m.end():end].strip())
    bare = None
    for bare in _BOX_BARE.finditer(text):  # noqa: B007 (the last match)
        pass
    if bare is not None and (found is None or bare.start() > found[0]):
        return bare.group(1)
    return found[1] if found else None


def extract_answer(text: str) -> str | None:
    """The boxed answer; else 'the answer is X'; else the last number in the text; else None."""
    if not text:
        return None
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    m = None
    for m in _ANSWER_IS.finditer(text):  # noqa: B007 (the last match)
        pass
    if m and m.group(1).strip(" $"):
        return m.group(1).strip().strip("$").strip()
    nums = _NUMBER.findall(text)
    return nums[-1].rstrip(",") if nums else None


def clean_answer(ans: str) -> str:
    """Formatting removed: unescaped `$`, surrounding spaces, a trailing period, thousands commas."""
    s = re.sub(r"(?<!\\)\$", "", str(ans)).strip().rstrip(".").rstrip()
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    return s
