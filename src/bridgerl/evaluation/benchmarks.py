"""Benchmark rows `{id, problem, answer, data_source}` for evaluation.

Order of lookup: an explicit file (`--data`), else the prepared copy written by `bridgerl prepare`
(data.out_dir/eval/<name>.jsonl, so evaluation scores exactly what was prepared and decontaminated
against), else the configured source (eval.sources, then bridgerl.data.sources.KNOWN).
"""

from __future__ import annotations

from pathlib import Path

from bridgerl.config import Config, SourceSpec
from bridgerl.core.io import DataError, read_jsonl
from bridgerl.core.stage_table import EVAL_SETS
from bridgerl.data import sources


def data_source_of(cfg: Config, name: str) -> str:
    """The verifier tag of a benchmark: from its configured/known source, else 'math'."""
    try:
        return sources.resolve(name, cfg.eval.sources).data_source
    except DataError:
        return "math"


def load_file(path: str | Path, name: str, data_source: str) -> tuple[list[dict], str]:
    """A local JSONL/JSON/parquet/CSV file with fields id, problem, answer."""
    spec = SourceSpec(name=name, kind="local", path=str(path), data_source=data_source)
    if not Path(path).exists():
        raise DataError(f"{path}: benchmark file not found")
    return sources.load_rows(spec, where=str(path)), str(path)


def load(cfg: Config, name: str, data: str | None = None) -> tuple[list[dict], str]:
    """(rows, origin) for benchmark `name`; rows keep their data_source tag ('math' when absent)."""
    if data:
        return load_file(data, name, data_source_of(cfg, name))
    prepared = Path(cfg.data.out_dir) / EVAL_SETS.name / f"{name}.jsonl"
    if prepared.exists():
        rows = read_jsonl(prepared, required=("id", "problem", "answer"))
        for r in rows:
            r["id"] = str(r["id"])
            r.setdefault("data_source", "math")
        return rows, str(prepared)
    spec = sources.resolve(name, cfg.eval.sources)
    if spec.kind == "embedded":
        raise DataError(f"{prepared}: not found; the embedded task's held-out split is made by `bridgerl prepare`")
    try:
        rows = sources.load_rows(spec, where=f"eval.benchmarks[{name}]")
    except DataError as e:
        raise DataError(f"{e}\n(benchmark {name!r} was not prepared; run `bridgerl prepare`, point "
                        f"eval.sources.{name} at a local file, or pass --data)") from None
    return rows, (spec.path or name)
