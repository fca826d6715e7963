"""Load problems `{id, problem, answer, data_source}` from a SourceSpec: embedded, hub id or local file.

Known hub sources (ids and field mappings) are listed in `KNOWN`; `resolve(name, overrides)` gives
the spec for a benchmark or RL set by name. Users' own files only need a field mapping.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

from bridgerl.config import FieldMap, SourceSpec
from bridgerl.core.io import DataError, iter_jsonl, read_json, read_text

log = logging.getLogger(__name__)

# name → spec. Hub ids and columns as published; `local` copies with fields id/problem/answer work too.
KNOWN: dict[str, SourceSpec] = {
    # RL training sets
    "limr": SourceSpec(name="limr", kind="hub", path="GAIR/LIMR", split="train",
                       fields=FieldMap(id=None, problem="prompt", answer="answer")),
    "math_level3to5": SourceSpec(name="math_level3to5", kind="hub", path="hkust-nlp/SimpleRL-Zoo-Data",
                                 subset="simplelr_qwen_level3to5", split="train",
                                 fields=FieldMap(id=None, problem="question", answer="gt_answer")),
    # evaluation benchmarks (docs/evaluation.md lists them with their field mappings). Where a hub copy
    # has no stable id column, ids are a hash of the problem text (id=None).
    "math500": SourceSpec(name="math500", kind="hub", path="HuggingFaceH4/MATH-500", split="test",
                          fields=FieldMap(id="unique_id", problem="problem", answer="answer")),
    "minerva_math": SourceSpec(name="minerva_math", kind="hub", path="math-ai/minervamath", split="test",
                               fields=FieldMap(id=None, problem="question", answer="answer")),
    "olympiadbench": SourceSpec(name="olympiadbench", kind="hub", path="math-ai/olympiadbench", split="test",
                                fields=FieldMap(id="id", problem="question", answer="final_answer")),
    "aime24": SourceSpec(name="aime24", kind="hub", path="HuggingFaceH4/aime_2024", split="train",
                         fields=FieldMap(id="id", problem="problem", answer="answer")),
    "amc23": SourceSpec(name="amc23", kind="hub", path="math-ai/amc23", split="test",
                        fields=FieldMap(id=None, problem="question", answer="answer")),
    "gsm8k": SourceSpec(name="gsm8k", kind="hub", path="openai/gsm8k", subset="main", split="test",
                        fields=FieldMap(id=None, problem="question", answer="answer"), answer_regex=r"####\s*(.+)$"),
    "synthetic": SourceSpec(name="synthetic", kind="embedded", data_source="synthetic"),
}


def resolve(name: str, overrides: dict[str, SourceSpec] | None = None) -> SourceSpec:
    if overrides and name in overrides:
        return overrides[name]
    if name in KNOWN:
        return KNOWN[name]
    raise DataError(f"benchmark {name!r}: unknown (known: {', '.join(sorted(KNOWN))}); "
                    f"add it under eval.sources with a path and field mapping")


def _hash_id(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _cell(v) -> str:
    if isinstance(v, (list, tuple)):
        v = v[0] if len(v) == 1 else ", ".join(map(str, v))
    return str(v).strip()


def _rows_local(path: Path) -> list[dict]:
    return [r for _, r in _located_rows(path)]


def _located_rows(path: Path) -> list[tuple[str, dict]]:
    """(where, row) for each record of a local file: `file:line` for JSONL and CSV, `file: record N` else."""
    suf = path.suffix.lower()
    if suf in (".jsonl", ".ndjson"):
        return [(f"{path}:{lineno}", row) for lineno, row in iter_jsonl(path)]
    if suf == ".json":
        data = read_json(path)
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise DataError(f"{path}: expected a JSON list of objects")
        return [(f"{path}: record {i}", r) for i, r in enumerate(data, 1)]
    if suf == ".parquet":
        import pandas as pd
        try:
            rows = pd.read_parquet(path).to_dict(orient="records")
        except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a corrupt file
            raise DataError(f"{path}: not a readable parquet file ({type(e).__name__}: {e})") from None
        return [(f"{path}: record {i}", r) for i, r in enumerate(rows, 1)]
    if suf == ".csv":
        return _rows_csv(path)
    raise DataError(f"{path}: unsupported file type {suf!r} (use .jsonl, .json, .parquet or .csv)")


def _rows_csv(path: Path) -> list[tuple[str, dict]]:
    import csv
    import io

    text = read_text(path)  # names file:line if it is not UTF-8
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    rows = []
    try:
        for r in reader:
            if None in r or any(v is None for v in r.values()):
                raise DataError(f"{path}:{reader.line_num}: expected {len(reader.fieldnames)} comma-separated fields "
                                f"as in the header ({', '.join(reader.fieldnames)})")
            rows.append((f"{path}:{reader.line_num}", r))
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: malformed CSV ({e})") from None
    if reader.fieldnames is None:
        raise DataError(f"{path}: empty CSV file (expected a header line)")
    return rows


def _rows_hub(spec: SourceSpec) -> list[dict]:
    from datasets import load_dataset

    if not spec.revision:
        log.warning("source %r: hub dataset %s is not pinned (no `revision`): a change on the hub changes the "
                    "data without DVC noticing; set revision to a commit sha", spec.name, spec.path)
    try:
        ds = load_dataset(spec.path, spec.subset, split=spec.split, revision=spec.revision)
    except Exception as e:  # offline, unknown id, …
        raise DataError(f"source {spec.name!r}: could not load hub dataset {spec.path!r} "
                        f"(subset={spec.subset}, split={spec.split}, revision={spec.revision}): {e}") from e
    return list(ds)


def provenance(spec: SourceSpec, rows: list[dict]) -> dict:
    """What the data card records of a loaded source: where from, which revision, a hash of the rows."""
    blob = json.dumps([[r["id"], r["problem"], r["answer"]] for r in rows], ensure_ascii=False).encode()
    out = {"kind": spec.kind, "path": spec.path, "n": len(rows), "rows_sha256": hashlib.sha256(blob).hexdigest()}
    if spec.kind == "hub":
        out.update(subset=spec.subset, split=spec.split, revision=spec.revision, pinned=bool(spec.revision))
    return out


def _is_null(v) -> bool:
    """None, or a missing cell as pandas gives it (NaN) for a parquet file."""
    return v is None or (isinstance(v, float) and v != v)


def _check_row(loc: str, r: dict, f: FieldMap, max_chars: int | None) -> None:
    missing = [k for k in (f.problem, f.answer) + ((f.id,) if f.id else ()) if k not in r]
    if missing:
        raise DataError(f"{loc}: missing field(s) {', '.join(missing)} (field mapping {f.model_dump()})")
    for what, key in (("problem", f.problem), ("answer", f.answer)):
        if _is_null(r[key]) or not _cell(r[key]):
            raise DataError(f"{loc}: {what} ({key!r}) is {'null' if _is_null(r[key]) else 'empty'}")
        if max_chars is not None and len(_cell(r[key])) > max_chars:
            raise DataError(f"{loc}: {what} ({key!r}) is {len(_cell(r[key]))} characters, over the limit "
                            f"data.max_problem_chars = {max_chars}")


def load_rows(spec: SourceSpec, where: str = "", max_chars: int | None = None) -> list[dict]:
    """Rows mapped to {id, problem, answer, data_source, source}; `where` prefixes error messages. An empty
    source, a null or empty problem/answer, or one longer than `max_chars` characters is a DataError."""
    if spec.kind == "embedded":
        raise DataError(f"{where or spec.name}: the embedded task is generated, not loaded")
    if spec.kind == "local":
        located, origin = _located_rows(Path(spec.path)), spec.path
    else:
        origin = f"hub:{spec.path}"
        located = [(f"{origin}: record {i}", r) for i, r in enumerate(_rows_hub(spec), 1)]
    if not located:
        raise DataError(f"{origin}: no records ({where or spec.name} is empty)")
    f = spec.fields
    rx = re.compile(spec.answer_regex, re.S | re.M) if spec.answer_regex else None
    out = []
    for loc, r in located:
        _check_row(loc, r, f, max_chars)
        problem, answer = _cell(r[f.problem]), _cell(r[f.answer])
        if rx:
            m = rx.search(answer)
            if not m:
                raise DataError(f"{loc}: answer does not match answer_regex {spec.answer_regex!r}")
            answer = m.group(1).strip()
        rid = _cell(r[f.id]) if f.id else _hash_id(problem)
        out.append({"id": rid, "problem": problem, "answer": answer, "data_source": spec.data_source,
                    "source": spec.name})
    return out


def normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower())
