"""`bridgerl evaluate` (model and --predictions), backend selection, and `bridgerl report`."""

from __future__ import annotations

import json
import re

import pytest
from conftest import SHARED_DATA, make_cfg, run_cli

from bridgerl.config import ConfigError
from bridgerl.core.io import DataError, read_jsonl
from bridgerl.evaluation.backends import select_backend
from bridgerl.evaluation.report import write_report
from bridgerl.stages import evaluate

BENCH = SHARED_DATA / "benchmarks"
FIVE = ["math500", "minerva_math", "olympiadbench", "aime24", "amc23"]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("name", FIVE)
def test_gold_answers_boxed_score_100_percent(tmp_path, name):
    rows = read_jsonl(BENCH / f"{name}.jsonl")
    preds = _write_jsonl(tmp_path / "preds.jsonl",
                         [{"id": r["id"], "output": f"Reasoning... so the answer is $\\boxed{{{r['answer']}}}$."}
                          for r in rows])
    cfg = make_cfg(tmp_path)
    summary = evaluate.score_predictions(cfg, str(preds), name, str(BENCH / f"{name}.jsonl"), out=tmp_path / "scored")
    m = summary["benchmarks"][name]
    assert m["n"] == len(rows) and m["missing"] == 0
    assert m["accuracy"] == 1.0, [i["id"] for i in read_jsonl(tmp_path / "scored" / f"{name}.jsonl") if not i["correct"]]


def test_predictions_cli_scores_into_its_own_directory_not_the_pipelines(tmp_path):
    rows = read_jsonl(BENCH / "aime24.jsonl")[:6]
    data = _write_jsonl(tmp_path / "aime_small.jsonl", rows)
    outs = [f"\\boxed{{{r['answer']}}}" if i % 2 == 0 else "\\boxed{-1}" for i, r in enumerate(rows)]
    preds = _write_jsonl(tmp_path / "p.jsonl", [{"id": r["id"], "output": o, "finish_reason": "stop"}
                                                for r, o in zip(rows, outs)])
    p = run_cli("evaluate", "--predictions", str(preds), "--benchmark", "aime24", "--data", str(data),
                *[a for kv in (["tracking.enabled=false", f"eval.out_dir={tmp_path}/eval",
                                f"eval.metrics_file={tmp_path}/m/eval.json", f"data.out_dir={tmp_path}/none"])
                  for a in ("-S", kv)], cwd=tmp_path)
    printed = json.loads(p.stdout)  # stdout holds the result and nothing else
    assert printed["accuracy"] == pytest.approx(0.5) and printed["n"] == 6
    assert printed["out"] == "runs/predictions"
    # the pipeline's evaluation outputs are untouched: `bridgerl register` reads those
    assert not (tmp_path / "eval").exists() and not (tmp_path / "m").exists()
    metrics = json.loads((tmp_path / "runs" / "predictions" / "eval.json").read_text())
    assert metrics["model_sha256"] is None
    assert metrics["avg_accuracy"] == pytest.approx(0.5)
    b = metrics["benchmarks"]["aime24"]
    assert b["truncation_rate"] == 0.0 and b["mean_output_chars"] > 0 and b["mean_output_tokens"] is None
    items = read_jsonl(tmp_path / "runs" / "predictions" / "aime24.jsonl")
    assert [i["correct"] for i in items] == [True, False] * 3
    assert {"id", "prompt", "output", "extracted", "correct"} <= set(items[0])
    assert items[1]["extracted"] == "-1" and rows[0]["problem"] in items[0]["prompt"]


def test_predictions_avg_at_k_and_merge(tmp_path):
    rows = read_jsonl(BENCH / "amc23.jsonl")[:2]
    data = _write_jsonl(tmp_path / "amc.jsonl", rows)
    a0, a1 = rows[0]["answer"], rows[1]["answer"]
    preds = _write_jsonl(tmp_path / "p.jsonl", [
        {"id": rows[0]["id"], "output": [f"\\boxed{{{a0}}}", "\\boxed{0.123}", f"\\boxed{{{a0}}}", "no idea"]},
        {"id": rows[1]["id"], "output": [f"\\boxed{{{a1}}}"] * 2},
        {"id": rows[1]["id"], "output": "\\boxed{0.5}", "truncated": True},  # a repeated id adds samples
    ])
    cfg = make_cfg(tmp_path)
    evaluate.score_predictions(cfg, str(preds), "gsm8k", str(data), out=tmp_path / "scored")
    s = evaluate.score_predictions(cfg, str(preds), "amc23", str(data), merge=True, out=tmp_path / "scored")
    assert set(s["benchmarks"]) == {"gsm8k", "amc23"}
    m = s["benchmarks"]["amc23"]
    assert m["accuracy"] == pytest.approx((2 / 4 + 2 / 3) / 2)
    assert m["samples"] == 4 and m["no_answer_rate"] == pytest.approx(1 / 7)
    assert m["truncation_rate"] == pytest.approx(1.0)  # only the one line that said so is known


@pytest.mark.parametrize("lines, message", [
    (['{"output": "\\\\boxed{1}"}'], r":1: missing field 'id'"),
    (['{"id": "aime24-0", "output": "1"}', '{"id": "nope-7", "output": "1"}'], r":2: id 'nope-7' is not an item"),
    (['{"id": "aime24-0", "output": "1"}', '', '{"id": "aime24-1", "output": "2"'], r":3: not valid JSON"),
    (['{"id": "aime24-0"}'], r":1: missing field 'output'"),
    (['{"id": "aime24-0", "output": 5}'], r":1: 'output' must be a string"),
    (['["aime24-0", "1"]'], r":1: expected a JSON object"),
    ([], r": empty file: no predictions"),
    (['', '   '], r": empty file: no predictions"),
])
def test_malformed_predictions_name_file_and_line(tmp_path, lines, message):
    preds = tmp_path / "bad_preds.jsonl"
    preds.write_text("\n".join(lines) + ("\n" if lines else ""))
    with pytest.raises(DataError, match=re.escape(str(preds)) + message):
        evaluate.score_predictions(make_cfg(tmp_path), str(preds), "aime24", str(BENCH / "aime24.jsonl"),
                                   out=tmp_path / "scored")
    assert not (tmp_path / "scored").exists()


def test_malformed_predictions_cli_exit_code_and_message(tmp_path):
    preds = tmp_path / "p.jsonl"
    preds.write_text('{"id": "aime24-0", "output": "\\\\boxed{204}"}\n{"id": "x", "output": "1"}\n')
    p = run_cli("evaluate", "--predictions", str(preds), "--benchmark", "aime24", "--data",
                str(BENCH / "aime24.jsonl"), "-S", "tracking.enabled=false", cwd=tmp_path, check=False)
    assert p.returncode == 2
    assert f"{preds}:2: id 'x' is not an item of benchmark 'aime24'" in p.stderr
    p = run_cli("evaluate", "--predictions", str(preds), "-S", "tracking.enabled=false", cwd=tmp_path, check=False)
    assert p.returncode == 2 and "--benchmark" in p.stderr


def test_predictions_without_data_use_configured_local_source(tmp_path):
    rows = read_jsonl(BENCH / "math500.jsonl")[:3]
    preds = _write_jsonl(tmp_path / "p.jsonl", [{"id": r["id"], "output": f"\\boxed{{{r['answer']}}}"} for r in rows])
    cfg = make_cfg(tmp_path, f"eval.sources={{math500: {{name: math500, kind: local, path: {BENCH}/math500.jsonl}}}}")
    m = evaluate.score_predictions(cfg, str(preds), "math500", out=tmp_path / "s")["benchmarks"]["math500"]
    assert m["accuracy"] == 1.0 and m["n"] == 3 and m["missing"] == 497


def test_hub_style_parquet_with_field_mapping(tmp_path):
    """A file shaped like the olympiadbench hub copy (question, final_answer as a list, int id)."""
    import pandas as pd

    rows = read_jsonl(BENCH / "olympiadbench.jsonl")[:4]
    pd.DataFrame({"id": list(range(4)), "question": [r["problem"] for r in rows],
                  "final_answer": [[r["answer"]] for r in rows]}).to_parquet(tmp_path / "ob.parquet")
    preds = _write_jsonl(tmp_path / "p.jsonl", [{"id": i, "output": f"\\boxed{{{r['answer']}}}"}
                                                for i, r in enumerate(rows)])
    cfg = make_cfg(tmp_path, f"eval.sources={{olympiadbench: {{path: {tmp_path}/ob.parquet, "
                             "fields: {id: id, problem: question, answer: final_answer}}}")
    m = evaluate.score_predictions(cfg, str(preds), "olympiadbench", out=tmp_path / "s")["benchmarks"]["olympiadbench"]
    assert m["accuracy"] == 1.0 and m["n"] == 4


@pytest.mark.parametrize("requested, has_vllm, has_cuda, expected", [
    ("hf", True, True, "hf"), ("auto", True, True, "vllm"), ("auto", True, False, "hf"),
    ("auto", False, True, "hf"), ("vllm", True, True, "vllm"), ("vllm", True, False, "vllm"),
])
def test_backend_selection(requested, has_vllm, has_cuda, expected):
    assert select_backend(requested, has_vllm, has_cuda) == expected


@pytest.mark.parametrize("has_cuda", [True, False])
def test_backend_vllm_not_installed_is_a_config_error(has_cuda):
    with pytest.raises(ConfigError, match="not installed"):
        select_backend("vllm", False, has_cuda)


def test_backend_auto_on_this_machine_is_hf():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert select_backend("auto") == "hf"


def _metrics(accs: dict, samples: dict | None = None) -> dict:
    b = {n: {"accuracy": a, "n": 10, "samples": (samples or {}).get(n, 1)} for n, a in accs.items()}
    return {"benchmarks": b, "avg_accuracy": sum(accs.values()) / len(accs)}


def test_write_report_table_chart_and_extra_columns(tmp_path):
    named = {"bridge": _metrics({"math500": 0.5, "aime24": 0.1}, {"aime24": 8}),
             "rl_zero": _metrics({"math500": 0.4, "aime24": 0.2, "amc23": 0.3})}
    paths = write_report(named, tmp_path / "r", extra_columns={"bridge": {"wall time (s)": 12.345, "steps": 3}})
    md = paths["md"].read_text().splitlines()
    assert md[0] == "| Method | MATH500 | AIME24 (avg@8) | AMC23 | Avg. | wall time (s) | steps |"
    assert md[2] == "| bridge | **50.0** | 10.0 | – | 30.0 | 12.35 | 3 |"
    assert md[3] == "| rl_zero | 40.0 | **20.0** | **30.0** | **30.0** | – | – |"
    png = paths["png"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000
    assert json.loads(paths["json"].read_text())["rows"]["rl_zero"]["amc23"] == pytest.approx(30.0)
    with pytest.raises(DataError, match="unknown row"):
        write_report(named, tmp_path / "r2", extra_columns={"sft": {"x": 1}})


def test_report_cli(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_metrics({"synthetic": 0.25})))
    b.write_text(json.dumps(_metrics({"synthetic": 0.75})))
    run_cli("report", "--metrics", f"sft={a}", "--metrics", f"bridge={b}", "--out", str(tmp_path / "rep"),
            "-S", "tracking.enabled=false", cwd=tmp_path)
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| sft | 25.0 | 25.0 |" in md and "| bridge | **75.0** | **75.0** |" in md
    assert (tmp_path / "rep" / "report.png").stat().st_size > 0
    bad = tmp_path / "bad.json"
    bad.write_text('{"avg_accuracy": 1}')
    p = run_cli("report", "--metrics", f"x={bad}", "--out", str(tmp_path / "rep2"), cwd=tmp_path, check=False)
    assert p.returncode == 2 and str(bad) in p.stderr


@pytest.mark.slow
def test_evaluate_tiny_model_end_to_end_on_cpu(project, monkeypatch):
    """The real model path: prepared synthetic split + a local math benchmark, greedy and avg@2."""
    # mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI, which would win over tracking.local_db:
    # start without it (other tests may have set it) and let monkeypatch restore it afterwards
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = make_cfg(project, "eval.benchmarks=[synthetic, aime24]", "eval.max_items=3", "eval.max_new_tokens=8",
                   f"eval.sources={{aime24: {{name: aime24, kind: local, path: {BENCH}/aime24.jsonl}}}}",
                   "eval.samples_per_benchmark={aime24: 2}", "eval.backend=auto", "tracking.enabled=true")
    summary = evaluate.run(cfg, model_dir=str(project / "models" / "base"), progress=False)
    assert summary["backend"] == "hf"
    syn, aime = summary["benchmarks"]["synthetic"], summary["benchmarks"]["aime24"]
    assert syn["n"] == 3 and syn["samples"] == 1 and aime["n"] == 3 and aime["samples"] == 2
    assert 0 < syn["mean_output_tokens"] <= 8 and 0.0 <= syn["truncation_rate"] <= 1.0
    assert aime["temperature"] == cfg.eval.sampling_temperature
    assert summary["avg_accuracy"] == pytest.approx((syn["accuracy"] + aime["accuracy"]) / 2)
    on_disk = json.loads((project / "metrics" / "eval.json").read_text())
    assert on_disk["benchmarks"].keys() == {"synthetic", "aime24"}
    items = read_jsonl(project / "eval" / "aime24.jsonl")
    assert len(items) == 3 and len(items[0]["output"]) == 2 and len(items[0]["correct"]) == 2
    assert "Please reason step by step" in items[0]["prompt"]
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project}/mlruns.db")
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`bridgerl.stage` = 'evaluate'")
    assert len(runs) == 1
    assert runs[0].data.metrics["aime24_accuracy"] == aime["accuracy"]
    assert runs[0].data.metrics["avg_accuracy"] == summary["avg_accuracy"]
