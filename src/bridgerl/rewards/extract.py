"""Final-answer extraction from a model output (the one extractor every scorer uses), and answer cleaning.

Policy (as verl's and TRL's math rewards, which take the last boxed answer, with math-verify-like
fallbacks), applied to the last `MAX_SCORED_CHARS` characters of the output:
1. the last NON-empty closed `\\boxed{...}` / `\\fbox{...}` (nested and escaped braces handled; an empty
   `\\boxed{}`, e.g. echoed from the instruction, is skipped) or a bare `\\boxed 5`, whichever is later;
2. else the value after the last "(the / final) answer is|:|=" (up to the end of its line or sentence),
   unless that value is empty or only empty boxes;
3. else the last well-formed number (`-?\\d+` with optional thousands groups, decimals, `/d`; a dotted
   run such as "2.2.2" is not a number);
4. else None. An empty string is never returned, so None is the one "no answer" value.
Every step is linear in the text (one pass over braces, no backtracking-prone regexes), so an
adversarial output costs O(MAX_SCORED_CHARS) at most.
`clean_answer` strips what is formatting rather than mathematics (`$` delimiters, a trailing period,
thousands separators) so that gold and predicted answers are compared on the same footing.
"""

from __future__ import annotations

import re

MAX_SCORED_CHARS = 16_384  # only the output's tail is scored: final answers come last

_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BOX_BARE = re.compile(r"\\boxed\s+([^\s${}]+)")  # \boxed 5
_BRACE = re.compile(r"\\[{}]|[{}]")
_EMPTY_BOXES = re.compile(r"(?:\\(?:boxed|fbox)\s*\{\s*\}|\s)*")
_ANSWER_IS = re.compile(r"(?:final answer|the answer|answer)\s*(?:is|:|=)", re.IGNORECASE)
_SENTENCE_END = re.compile(r"\.(?:\s|$)")
_NUMBER = re.compile(r"(?<![\d.])-?(?:\d+(?:,\d{3})*(?:\.\d+)?|\.\d+)(?:/\d+)?(?!\.?\d)")
_THOUSANDS = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")


def _tail(text: str) -> str:
    return text[-MAX_SCORED_CHARS:] if len(text) > MAX_SCORED_CHARS else text


def _boxes(text: str) -> list[tuple[int, str]]:
    """(start, content) of every closed box, in one pass over the braces (unclosed ones are dropped)."""
    opens = {m.end(): m.start() for m in _BOX.finditer(text)}  # content start -> box start
    stack: list[int] = []  # content starts of open groups
    found = []
    for m in _BRACE.finditer(text):
        tok = m.group()
        if len(tok) == 2:  # \{ or \}: literal
            continue
        if tok == "{":
            stack.append(m.end())
        elif stack:
            start = stack.pop()
            if start in opens:
                found.append((opens[start], text[start:m.start()].strip()))
    return found


def last_boxed(text: str) -> str | None:
    """Content of the last non-empty closed \\boxed{...} (or \\fbox{...}, or `\\boxed 5`); None if none."""
    text = _tail(text or "")
    best = max(((s, c) for s, c in _boxes(text) if c), default=None)
    bare = None
    for bare in _BOX_BARE.finditer(text):  # noqa: B007 (the last match)
        pass
    if bare is not None and (best is None or bare.start() > best[0]):
        return bare.group(1)
    return best[1] if best else None


def _answer_is(text: str) -> str | None:
    m = None
    for m in _ANSWER_IS.finditer(text):  # noqa: B007 (the last match)
        pass
    if m is None:
        return None
    end = text.find("\n", m.end())
    value = text[m.end():] if end < 0 else text[m.end():end]
    stop = _SENTENCE_END.search(value)
    value = (value[:stop.start()] if stop else value).strip()
    value = value.lstrip(":").strip().strip("$").strip()
    if not value or _EMPTY_BOXES.fullmatch(value) or "\\boxed{}" in value.replace(" ", ""):
        return None  # the instruction echoed ("the answer is within \\boxed{}"): no answer given here
    return value


def extract_answer(text: str) -> str | None:
    """The final answer of `text` by the policy above; None when there is none (never '')."""
    text = _tail(text or "")
    if not text:
        return None
    found = last_boxed(text)
    if found is None:
        found = _answer_is(text)
    if found is None:
        nums = _NUMBER.findall(text)
        found = nums[-1] if nums else None
    return found or None


def clean_answer(ans: str) -> str:
    """Formatting removed: unescaped `$`, surrounding spaces, a trailing period, thousands commas."""
    s = re.sub(r"(?<!\\)\$", "", str(ans)).strip().rstrip(".").rstrip()
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    return s
