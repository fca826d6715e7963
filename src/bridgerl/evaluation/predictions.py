"""Reading a JSONL of generations made elsewhere: one `{"id", "output"}` object per line.

`output` is a string or a list of strings (k samples; an id may also repeat to add samples).
Optional per line: `prompt` (kept in the per-item file), `truncated` (bool) or `finish_reason`
("length" means truncated), `output_tokens` (int). Every problem raises DataError naming file:line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bridgerl.core.io import DataError, iter_jsonl


@dataclass
class Predictions:
    outputs: dict[str, list[str]] = field(default_factory=dict)
    truncated: dict[str, list[bool | None]] = field(default_factory=dict)
    n_tokens: dict[str, list[int | None]] = field(default_factory=dict)
    prompts: dict[str, str] = field(default_factory=dict)


def read(path: str | Path, known_ids: set[str], benchmark: str, origin: str) -> Predictions:
    """Predictions keyed by item id; ids must belong to `benchmark` (whose rows came from `origin`)."""
    path = Path(path)
    preds = Predictions()
    for lineno, row in iter_jsonl(path, what="predictions file"):
        where = f"{path}:{lineno}"
        for key in ("id", "output"):
            if key not in row:
                raise DataError(f"{where}: missing field '{key}'")
        rid = str(row["id"])
        if rid not in known_ids:
            raise DataError(f"{where}: id {rid!r} is not an item of benchmark {benchmark!r} (from {origin})")
        out = row["output"]
        outs = [out] if isinstance(out, str) else out
        if not isinstance(outs, list) or not outs or not all(isinstance(o, str) for o in outs):
            raise DataError(f"{where}: 'output' must be a string or a non-empty list of strings")
        tr = row.get("truncated")
        if tr is None and "finish_reason" in row:
            tr = row["finish_reason"] == "length"
        if tr is not None and not isinstance(tr, bool):
            raise DataError(f"{where}: 'truncated' must be true or false")
        ntok = row.get("output_tokens")
        if ntok is not None and (not isinstance(ntok, int) or isinstance(ntok, bool) or ntok < 0):
            raise DataError(f"{where}: 'output_tokens' must be a non-negative integer")
        preds.outputs.setdefault(rid, []).extend(outs)
        preds.truncated.setdefault(rid, []).extend([tr] * len(outs))
        preds.n_tokens.setdefault(rid, []).extend([ntok] * len(outs))
        if isinstance(row.get("prompt"), str):
            preds.prompts[rid] = row["prompt"]
    if not preds.outputs:
        raise DataError(f"{path}: empty file: no predictions")
    return preds
