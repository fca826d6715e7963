"""build-demos against a real OpenAI-compatible server over the tiny model (with injected faults),
a local HF teacher, an imported trace file, and the embedded teacher.

The server (bridgerl.demos.serve + tests/teacher_server.py) runs in this process on 127.0.0.1 and
really generates with the tiny model; the builds run in-process or as `python -m bridgerl` children.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import teacher_server
from conftest import FAST, REPO, SHARED_DATA, make_cfg, path_overrides, run_cli

from bridgerl.core.io import read_jsonl
from bridgerl.demos.filters import Decontaminator, filter_problems
from bridgerl.rewards import is_correct
from bridgerl.stages import build_demos

KEY_ENV = "BRIDGERL_TEST_TEACHER_KEY"
KEY = "sk-bridgerl-test-7c1d2e9f40ab"  # must never appear in any output


@pytest.fixture(scope="module")
def backend(tiny_project):
    return teacher_server.RecordingBackend(str(tiny_project / "models" / "base"), name="teacher")


@pytest.fixture
def served(backend):
    backend.served.clear()
    return backend.served


def endpoint_args(srv, *extra: str) -> list[str]:
    return ["demos.source=endpoint", f"demos.endpoint.base_url={srv.base_url}", "demos.endpoint.model=teacher",
            f"demos.endpoint.api_key_env={KEY_ENV}", "demos.endpoint.backoff_s=0.01", "demos.endpoint.concurrency=3",
            "demos.samples_per_problem=2", "demos.max_problems=12", "demos.max_new_tokens=24",
            "demos.temperature=1.0", *extra]


def cli_args(root: Path, overrides: list[str]) -> list[str]:
    args = ["build-demos", "-P", str(REPO / "params.yaml")]
    for o in FAST + path_overrides(root) + overrides:
        args += ["-S", o]
    return args


def journal_lines(root: Path) -> list[str]:
    files = sorted((root / "data" / "demos.partial").glob("samples-*.jsonl"))
    assert len(files) == 1, files
    return files[0].read_text().splitlines()


def plant_benchmark_problem(root: Path) -> str:
    """Add MATH-500 to the prepared benchmarks and a lightly edited copy of one of its problems to rl_train."""
    prepared = root / "data" / "prepared"
    shutil.copy(SHARED_DATA / "benchmarks" / "math500.jsonl", prepared / "eval" / "math500.jsonl")
    bench = read_jsonl(prepared / "eval" / "math500.jsonl")[3]
    planted = {"id": "planted-0", "problem": "Question: " + bench["problem"] + " Show your work.",
               "answer": bench["answer"], "data_source": "math", "source": "scraped"}
    rows = read_jsonl(prepared / "rl_train.jsonl")
    with open(prepared / "rl_train.jsonl", "w") as f:
        for r in [planted] + rows:
            f.write(json.dumps(r) + "\n")
    return planted["problem"]


def assert_counts_add_up(c: dict) -> None:
    assert c["problems"] == c["dropped_duplicate"] + c["dropped_contaminated"] + c["problems_for_traces"]
    assert c["samples"] == c["dropped_wrong_answer"] + c["correct"]
    assert c["correct"] == c["dropped_too_long"] + c["eligible"]
    assert c["problems_for_traces"] == c["problems_without_trace"] + c["kept"]


def assert_no_key(*texts: str) -> None:
    for t in texts:
        assert KEY not in t


def test_endpoint_retries_faults_keeps_work_and_counts_add_up(project, backend, served, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv(KEY_ENV, KEY)
    planted = plant_benchmark_problem(project)
    faults = teacher_server.Faults({2: "500", 4: "timeout", 6: "malformed", 8: "429", 9: "no_choices"}, slow_s=5)
    srv = teacher_server.start(backend, faults, api_key=KEY)
    try:
        cfg = make_cfg(project, *endpoint_args(srv, "demos.endpoint.timeout_s=2"))
        card = build_demos.run(cfg, progress=False)
        assert faults.injected == {"500": 1, "timeout": 1, "malformed": 1, "429": 1, "no_choices": 1}
        retries = card["retries"]
        assert retries["500"] >= 1 and retries["429"] >= 1 and retries["malformed"] >= 2 and retries["timeout"] >= 1
        c = card["counts"]
        assert_counts_add_up(c)
        assert c["problems"] == 12 and c["dropped_contaminated"] == 1 and c["samples"] == 11 * 2
        assert card["decontamination"]["dropped_ids"] == {"math500": ["planted-0"]}
        assert not [p for p, _ in served if planted in p], "a contaminated problem was sent to the teacher"
        # every sample was generated once (plus one per client-side timeout of a request the model did answer)
        assert sum(served.values()) == c["samples"] + retries["timeout"] - faults.injected["timeout"]
        lines = journal_lines(project)
        keys = [(json.loads(x)["id"], json.loads(x)["sample"]) for x in lines]
        assert len(keys) == len(set(keys)) == c["samples"]
        demos = read_jsonl(project / "data" / "demos" / "demos.jsonl")
        assert len(demos) == c["kept"]
        journaled = {json.loads(x)["response"] for x in lines}
        for d in demos:
            assert set(d) == {"id", "problem", "answer", "response", "data_source"}
            assert d["response"] in journaled and is_correct(d["data_source"], d["response"], d["answer"])
        md = (project / "data" / "demos" / "demo_card.md").read_text()
        assert "| verify final answer | 22 |" in md
        settings = "".join(p.read_text() for p in (project / "data" / "demos.partial").iterdir())
        assert_no_key(json.dumps(card), md, settings, caplog.text,
                      (project / "data" / "demos" / "demos.jsonl").read_text())
        assert "retrying" in caplog.text  # the retries were logged, without the key

        served.clear()  # a rerun with the same settings asks the teacher for nothing
        before = (project / "data" / "demos" / "demos.jsonl").read_bytes()
        card2 = build_demos.run(cfg, progress=False)
        assert card2["requested_this_run"] == 0 and card2["resumed_samples"] == 22 and not served
        assert (project / "data" / "demos" / "demos.jsonl").read_bytes() == before
    finally:
        srv.stop()


def test_persistent_failure_keeps_finished_work_and_rerun_completes(project, backend, served):
    embedded = (project / "data" / "demos" / "demos.jsonl").read_bytes()
    faults = teacher_server.Faults(fail_from=9)  # requests 1-8 succeed, then the endpoint is down for good
    srv = teacher_server.start(backend, faults, api_key=KEY)
    env = {KEY_ENV: KEY}
    try:
        args = cli_args(project, endpoint_args(srv, "demos.endpoint.max_retries=2"))
        p = run_cli(*args, env=env, check=False)
        assert p.returncode == 1, p.stderr[-2000:]
        assert "8 of 24 samples are done" in p.stderr and "rerun `bridgerl build-demos`" in p.stderr
        assert "counts so far" in p.stderr and "Traceback" not in p.stderr
        assert (project / "data" / "demos" / "demos.jsonl").read_bytes() == embedded, "failed build replaced output"
        first = journal_lines(project)
        assert len(first) == 8
        assert sum(served.values()) == 8

        faults.fail_from = None  # the endpoint recovers
        served.clear()
        p2 = run_cli(*args, env=env)
        lines = journal_lines(project)
        assert lines[:8] == first and len(lines) == 24
        assert sum(served.values()) == 16, "finished samples were requested again"
        card = json.loads((project / "data" / "demos" / "demo_card.json").read_text())
        assert card["resumed_samples"] == 8 and card["requested_this_run"] == 16
        assert_counts_add_up(card["counts"])
        assert_no_key(p.stdout, p.stderr, p2.stdout, p2.stderr)
    finally:
        srv.stop()


def test_killed_build_reruns_with_no_duplicates_and_nothing_lost(project, backend, served):
    faults = teacher_server.Faults(gate_after=10)  # requests after the 10th hang until released
    srv = teacher_server.start(backend, faults, api_key=KEY)
    env = {**os.environ, KEY_ENV: KEY, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    args = cli_args(project, endpoint_args(srv))
    try:
        proc = subprocess.Popen([sys.executable, "-m", "bridgerl", *args], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + 180
        journal_dir = project / "data" / "demos.partial"
        while time.monotonic() < deadline and proc.poll() is None:
            files = list(journal_dir.glob("samples-*.jsonl"))
            if files and len(files[0].read_text().splitlines()) >= 10 and faults.n >= 13:
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)  # three requests are in flight
        proc.wait(timeout=30)
        proc.stderr.close()
        faults.release.set()
        before = journal_lines(project)
        assert len(before) == 10

        served.clear()
        run_cli(*args, env={KEY_ENV: KEY})
        after = journal_lines(project)
        assert after[:10] == before, "journaled samples were changed"
        keys = [(json.loads(x)["id"], json.loads(x)["sample"]) for x in after]
        assert len(keys) == len(set(keys)) == 24, "duplicates or gaps after the rerun"
        assert sum(served.values()) == 14
        card = json.loads((project / "data" / "demos" / "demo_card.json").read_text())
        assert card["counts"]["samples"] == 24 and card["resumed_samples"] == 10
        ids = [d["id"] for d in read_jsonl(project / "data" / "demos" / "demos.jsonl")]
        assert len(ids) == len(set(ids))
    finally:
        faults.release.set()
        srv.stop()


def test_rejected_api_key_fails_at_once_without_showing_it(project, backend, served, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-wrong-9a8b7c6d")
    faults = teacher_server.Faults()
    srv = teacher_server.start(backend, faults, api_key=KEY)
    try:
        cfg = make_cfg(project, *endpoint_args(srv, "demos.endpoint.concurrency=1"))
        with pytest.raises(build_demos.GenerationFailed) as e:
            build_demos.run(cfg, progress=False)
        msg = str(e.value)
        assert "401" in msg and "api_key_env" in msg and "sk-wrong" not in msg
        assert faults.n == 1, "a rejected key was retried"
        assert not served
    finally:
        srv.stop()


@pytest.mark.parametrize("layout", ["columns", "messages"])
def test_dataset_import_with_field_mapping(project, layout):
    """A local trace file: wrong answers, a too-long trace, a duplicate and a planted benchmark problem."""
    shutil.copy(SHARED_DATA / "benchmarks" / "math500.jsonl", project / "data" / "prepared" / "eval" / "math500.jsonl")
    bench = read_jsonl(SHARED_DATA / "benchmarks" / "math500.jsonl")[7]
    long_b = "We divide ten by four, which gives five halves, i.e. \\boxed{\\frac{5}{2}}."
    items = [
        ("a", "What is 2 + 3?", "5", ["2 + 3 = 6, so \\boxed{6}.", "Adding gives \\boxed{5}."]),
        ("b", "Compute 10 / 4.", "\\frac{5}{2}", [long_b, "\\boxed{2.5}"]),
        ("c", "What is 4 + 4?", "8", ["\\boxed{7}"]),
        ("d", "What is 3 * 3?", "9", [" ".join(["step"] * 60) + " \\boxed{9}"]),
        ("e", "what is 2 +  3?", "5", ["\\boxed{5}"]),  # the same problem as a
        ("f", "Problem: " + bench["problem"], bench["answer"], [f"\\boxed{{{bench['answer']}}}"]),
    ]
    path = project / "traces.jsonl"
    with open(path, "w") as f:
        for uid, q, gold, sols in items:
            if layout == "columns":
                f.write(json.dumps({"uid": uid, "question": q, "gold": gold, "generations": sols}) + "\n")
            else:  # one chat per row, several rows per problem
                for s in sols:
                    msgs = [{"role": "user", "content": q}, {"role": "assistant", "content": s}]
                    f.write(json.dumps({"uid": uid, "messages": msgs, "gold": gold}) + "\n")
    field_problem, response, select = ("question", "generations", "shortest") if layout == "columns" else \
        ("messages", "messages", "first")
    spec = f"{{name: traces, kind: local, path: {path}, data_source: math, " \
           f"fields: {{id: uid, problem: {field_problem}, answer: gold}}}}"
    cfg = make_cfg(project, "demos.source=dataset", f"demos.dataset={spec}", f"demos.response_field={response}",
                   f"demos.select={select}", "demos.max_tokens=40", "demos.decontaminate_ngram=8")
    card = build_demos.run(cfg, progress=False)
    c = card["counts"]
    assert_counts_add_up(c)
    assert c == {"problems": 6, "dropped_duplicate": 1, "dropped_contaminated": 1, "problems_for_traces": 4,
                 "samples": 6, "dropped_wrong_answer": 2, "correct": 4, "dropped_too_long": 1, "eligible": 3,
                 "problems_without_trace": 2, "kept": 2}
    assert card["decontamination"]["dropped_ids"] == {"math500": ["f"]}
    demos = {d["id"]: d for d in read_jsonl(project / "data" / "demos" / "demos.jsonl")}
    assert demos["a"]["response"] == "Adding gives \\boxed{5}."
    assert demos["b"]["response"] == ("\\boxed{2.5}" if select == "shortest" else long_b)
    assert demos["a"]["problem"] == "What is 2 + 3?" and demos["a"]["data_source"] == "math"
    assert card["teacher_accuracy"] == pytest.approx(4 / 6)


def test_dataset_field_mapping_errors_name_the_record(project):
    path = project / "bad.jsonl"
    path.write_text(json.dumps({"problem": "1+1?", "answer": "2"}) + "\n")
    cfg = make_cfg(project, "demos.source=dataset", f"demos.dataset={{name: bad, kind: local, path: {path}}}")
    from bridgerl.core.io import DataError

    with pytest.raises(DataError, match=r"bad.jsonl: record 1: missing field\(s\) solution, id"):
        build_demos.run(cfg, progress=False)


def test_decontaminator_ngrams_short_problems_and_exempt_sources():
    bench = {"math500": ["Find the number of ordered pairs of positive integers whose product is twelve and sum is odd.",
                         "Compute 7 choose 3."]}
    d = Decontaminator(bench, 6, exempt=["synthetic"])
    assert d.hit("Hint: find the number of ordered pairs of positive integers, then stop.") == "math500"
    assert d.hit("First compute 7 choose 3, then add one.") == "math500"  # a whole short benchmark problem
    assert d.hit("Find the number of ordered triples of even integers.") is None
    assert d.hit("Find the number of ordered pairs of positive integers", "synthetic") is None  # exempt: exact only
    assert d.hit("compute 7 CHOOSE 3", "synthetic") == "math500"
    rows = [{"id": "1", "problem": "Compute 7 choose 3."}, {"id": "2", "problem": "Add 1 and 2."},
            {"id": "3", "problem": "add 1 and  2"}]
    pf = filter_problems(rows, d)
    assert [r["id"] for r in pf.kept] == ["2"] and pf.dropped_duplicate == ["3"]


def test_hf_model_teacher_resumes_from_a_torn_journal(project):
    cfg_args = ["demos.source=hf_model", f"demos.hf_model={project / 'models' / 'base'}", "demos.samples_per_problem=2",
                "demos.max_problems=5", "demos.max_new_tokens=16", "demos.temperature=1.0", "demos.hf_batch_size=4"]
    cfg = make_cfg(project, *cfg_args)
    card = build_demos.run(cfg, progress=False)
    assert_counts_add_up(card["counts"])
    assert card["counts"]["samples"] == 10 and card["requested_this_run"] == 10
    assert card["length_unit"] == "teacher tokens"
    path = next((project / "data" / "demos.partial").glob("samples-*.jsonl"))
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:6]) + "\n" + lines[6][:20])  # as if killed while writing line 7
    card = build_demos.run(cfg, progress=False)
    assert card["resumed_samples"] == 6 and card["requested_this_run"] == 4
    keys = [(r["id"], r["sample"]) for r in read_jsonl(path)]  # every line parses again
    assert len(keys) == len(set(keys)) == 10
    # filter settings do not invalidate the journal: re-filtering costs no generation
    tok_dir = project / "models" / "base"
    card = build_demos.run(make_cfg(project, *cfg_args, f"demos.tokenizer={tok_dir}", "demos.select=first"),
                           progress=False)
    assert card["requested_this_run"] == 0 and card["length_unit"] == f"tokens ({tok_dir})"


def test_embedded_teacher_gives_every_synthetic_problem_a_verified_trace(tiny_project):
    rl = read_jsonl(tiny_project / "data" / "prepared" / "rl_train.jsonl")
    demos = read_jsonl(tiny_project / "data" / "demos" / "demos.jsonl")
    limit = make_cfg(tiny_project).demos.max_problems or len(rl)  # the default keeps demos scarce
    covered = rl[:limit]
    assert [d["id"] for d in demos] == [r["id"] for r in covered]
    assert all(is_correct("synthetic", d["response"], d["answer"]) and "=" in d["response"] for d in demos)
    card = json.loads((tiny_project / "data" / "demos" / "demo_card.json").read_text())
    assert card["counts"]["kept"] == card["counts"]["problems"] == len(covered)
    assert not (tiny_project / "data" / "demos.partial").exists()
