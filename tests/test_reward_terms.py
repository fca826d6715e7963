"""Users' own rewards (`rewards.terms`, bridgerl.rewards.terms): weighted terms from their files or modules, per
item or batched, run in worker processes under a timeout; failures score 0 and are counted, never fatal; the
correctness term decides accuracy; bad references fail before any work, naming the key."""

from __future__ import annotations

import csv
import json
import math
import os

import pytest
from conftest import make_cfg, run_cli

from bridgerl.config import ConfigError
from bridgerl.rewards.terms import Scorer, finish_metrics

USER_REWARDS = '''
import os, time

def fmt(output, answer, row):            # per item: a format bonus
    return 1.0 if "\\\\boxed{" in output else 0.0

def length(outputs, answers, rows):      # batched: one call per chunk of the batch
    return [min(len(o), 10) / 10 for o in outputs]

def graded(output, answer, row):         # graded correctness: partial credit for a near miss
    return 1.0 if output.strip().endswith(answer) else (0.5 if answer[0] in output else 0.0)

def slow(output, answer, row):
    time.sleep(60)
    return 1.0

def boom(output, answer, row):
    raise KeyError("no such field")

def words(output, answer, row):
    return "high"

def short(outputs, answers, rows):
    return [1.0]

def pid(output, answer, row):
    time.sleep(0.3)
    return float(os.getpid())

def tagged(output, answer, row):         # reads a column of the record beyond id/problem/answer
    return float(row["difficulty"])
'''


def _terms(*terms: str) -> str:
    return "rewards.terms=[" + ", ".join(terms) + "]"


@pytest.fixture
def rewards_file(tmp_path, monkeypatch):
    """rewards.py in the working directory (as a user's file beside params.yaml)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rewards.py").write_text(USER_REWARDS)
    return tmp_path / "rewards.py"


ROWS = [{"id": "a", "problem": "1+11?", "answer": "12", "data_source": "synthetic"},
        {"id": "b", "problem": "2+2?", "answer": "4", "data_source": "synthetic"}]


def test_weighted_terms_per_item_and_batched(rewards_file, tmp_path):
    cfg = make_cfg(tmp_path, _terms("{name: correct, function: by_data_source, correctness: true}",
                                    "{name: format, function: 'rewards.py:fmt', weight: 0.5}",
                                    "{name: length, function: 'rewards.py:length', weight: -0.1}"))
    outputs = [r"so \boxed{12}", "4", r"\boxed{5}", "so the answer is 4"]
    rows = [ROWS[0], ROWS[1], ROWS[1], ROWS[1]]
    with Scorer.from_config(cfg) as scorer:
        assert [t.batched for t in scorer.terms] == [False, False, True]
        s = scorer.score(rows, outputs)
    correct = [True, True, False, True]  # synthetic: the last number when there is no \boxed{}
    fmt = [1.0, 0.0, 1.0, 0.0]
    length = [min(len(o), 10) / 10 for o in outputs]
    assert s.correct == correct
    assert s.reward == pytest.approx([float(c) + 0.5 * f - 0.1 * n for c, f, n in zip(correct, fmt, length)])
    assert s.values["format"] == fmt and s.values["length"] == pytest.approx(length)
    assert s.failures == {"correct": 0, "format": 0, "length": 0}
    m = finish_metrics(s.metrics())
    assert m["reward/format"] == pytest.approx(0.5) and m["reward/correct"] == pytest.approx(0.75)
    assert m["reward_failures/length"] == 0.0 and not any(k.startswith(("reward_sum/", "reward_n/")) for k in m)


def test_failing_calls_score_zero_are_counted_and_never_stop_scoring(rewards_file, tmp_path):
    cfg = make_cfg(tmp_path, "rewards.workers=1", _terms(
        "{name: correct, function: by_data_source, correctness: true}",
        "{name: slow, function: 'rewards.py:slow', timeout_s: 0.5}",
        "{name: boom, function: 'rewards.py:boom'}", "{name: words, function: 'rewards.py:words'}",
        "{name: short, function: 'rewards.py:short'}"))
    with Scorer.from_config(cfg) as scorer:
        s = scorer.score(ROWS, [r"\boxed{12}", r"\boxed{4}"])
        again = scorer.score(ROWS[:1], [r"\boxed{12}"])  # the worker that overran still answers (or is replaced)
    assert s.correct == [True, True] and s.reward == [1.0, 1.0], "a failed term adds 0; the others still count"
    assert s.failures == {"correct": 0, "slow": 2, "boom": 2, "words": 2, "short": 2}
    assert "timed out after 0.5s" in s.errors["slow"][0]
    assert s.errors["boom"][0] == "raised KeyError: 'no such field'"
    assert "returned 'high' (str), not a number" in s.errors["words"][0]
    assert s.errors["short"][0] == "returned a list of 1 for a batch of 2"
    assert again.failures["slow"] == 1 and again.correct == [True]
    m = finish_metrics(s.metrics())
    assert m["reward_failures/slow"] == 2.0 and m["reward/slow"] == 0.0


def test_user_calls_run_concurrently_in_worker_processes(rewards_file, tmp_path):
    cfg = make_cfg(tmp_path, "rewards.workers=2", _terms("{name: correct, function: by_data_source, correctness: true}",
                                                         "{name: pid, function: 'rewards.py:pid'}"))
    with Scorer.from_config(cfg) as scorer:
        pids = scorer.score(ROWS * 2, ["x"] * 4).values["pid"]
    assert len(set(pids)) == 2 and os.getpid() not in pids


def test_correctness_term_per_data_source_and_graded_credit(rewards_file, tmp_path):
    """A term listing a data source judges it instead of the catch-all; a number is graded credit between
    reward_wrong and reward_correct; correct only at 1. Evaluation and demo filtering take the same verdict."""
    cfg = make_cfg(tmp_path, "train.grpo.reward_correct=1.0", "train.grpo.reward_wrong=-1.0", _terms(
        "{name: correct, function: by_data_source, correctness: true}",
        "{name: mine, function: 'rewards.py:graded', correctness: true, data_sources: [mytask]}",
        "{name: hard, function: 'rewards.py:tagged', data_sources: [mytask]}"))
    mine = {"id": "m", "problem": "name a 3", "answer": "3", "data_source": "mytask", "difficulty": 2}
    rows, outputs = [ROWS[0], mine, mine, mine], [r"\boxed{12}", "it is 3", "3 or so", "no idea"]
    with Scorer.from_config(cfg) as scorer:
        assert scorer.judge_term("mytask").name == "mine" and scorer.judge_term("synthetic").name == "correct"
        s = scorer.score(rows, outputs)
        assert scorer.judge_many(rows, outputs) == s.correct == [True, True, False, False]
        assert scorer.judge(mine, "3 or so") == ("3", False)  # extracted as ever; judged by the term
    # graded: -1 + v * 2 for v = 1, 0.5, 0; the "hard" term adds the record's difficulty column on mytask only
    assert s.reward == [1.0, 1.0 + 2, 0.0 + 2, -1.0 + 2]
    assert s.values["correct"][1:] == [None] * 3 and s.values["hard"][0] is None


def test_metrics_have_the_same_keys_whether_or_not_a_term_applied():
    """Ranks all-reduce their metrics key by key: a term that applied to none of this rank's rollouts still
    reports its sums, and reward/<term> is their mean once summed."""
    from bridgerl.rewards.terms import Scores

    here = Scores([0.0], [False], {"t": [None]}, {"t": 0}).metrics()
    there = Scores([1.0, 1.0], [True, True], {"t": [0.5, 1.0]}, {"t": 1}).metrics()
    assert here.keys() == there.keys()
    summed = {k: here[k] + there[k] for k in here}
    assert finish_metrics(summed) == {"reward/t": 0.75, "reward_failures/t": 1.0}
    assert finish_metrics(dict(here)) == {"reward_failures/t": 0.0}


@pytest.mark.parametrize("terms, error", [
    ("{name: x, function: 'nothere.py:fn'}", "rewards.terms.1.function = 'nothere.py:fn': file not found"),
    ("{name: x, function: 'rewards.py:nofn'}", "rewards.terms.1.function = 'rewards.py:nofn': rewards.py has no "
                                               "function 'nofn'"),
    ("{name: x, function: 'no_such_module_xyz:fn'}", "module 'no_such_module_xyz' not importable"),
    ("{name: x, function: 'len'}", "not a built-in (by_data_source, math, synthetic, boxed)"),
    ("{name: x, function: 'os.path:basename'}", "must take (output, answer, row) or (outputs, answers, rows)"),
    ("{name: x, function: 'os.path:join'}", "cannot tell the signature from its first parameter 'a'"),
])
def test_bad_function_fails_before_any_work_naming_the_key(rewards_file, tmp_path, terms, error):
    p = run_cli("train", "-S", f"train.out_dir={tmp_path}/out",
                "-S", _terms("{name: correct, function: by_data_source, correctness: true}", terms),
                cwd=tmp_path, check=False, timeout=120)
    assert p.returncode == 2, p.stderr
    [line] = [x for x in p.stderr.splitlines() if "error" in x]
    assert line.startswith("bridgerl train: error: ") and error in line and "Traceback" not in p.stderr, p.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("terms, error", [
    (["{name: a, function: boxed}", "{name: a, function: math}"], "term names must be unique: a"),
    (["{name: a, function: by_data_source, correctness: true}", "{name: b, function: math, correctness: true}"],
     "more than one correctness term for every data source"),
    (["{name: a, function: math, correctness: true, data_sources: [x]}",
      "{name: b, function: boxed, correctness: true, data_sources: [x, y]}"], "two correctness terms for data source 'x'"),
    (["{name: 'a b', function: math}"], "letters, digits"),
    (["{name: a, function: math, weight: heavy}"], "rewards.terms.0.weight"),
])
def test_invalid_terms_are_configuration_errors(tmp_path, terms, error):
    with pytest.raises(ConfigError, match="rewards") as e:
        make_cfg(tmp_path, _terms(*terms))
    assert error in str(e.value)


def test_a_data_source_without_a_correctness_term_is_refused(rewards_file, tmp_path):
    cfg = make_cfg(tmp_path, _terms("{name: mine, function: 'rewards.py:graded', correctness: true, "
                                    "data_sources: [mytask]}"))
    with Scorer.from_config(cfg) as scorer, pytest.raises(ConfigError, match="data source 'synthetic' .* has no "
                                                                              "correctness term"):
        scorer.check_sources([{"data_source": "mytask"}, {"data_source": "synthetic"}], "rl_train.jsonl")
    with Scorer(make_cfg(tmp_path).rewards) as scorer, pytest.raises(ConfigError, match="no built-in verifier"):
        scorer.check_sources([{"data_source": "mytask"}], "rl_train.jsonl")


def test_a_module_beside_params_is_importable_and_its_file_is_a_dependency(rewards_file, tmp_path):
    """'module:function' for a module in the working directory; its file (as a .py path's) is in the slices of
    the stages that score, so editing it reruns them and only them."""
    from bridgerl.core.stage_table import STAGES
    from bridgerl.stages.resolve_config import fingerprint, local_files

    by_module = make_cfg(tmp_path, _terms("{name: correct, function: by_data_source, correctness: true}",
                                          "{name: format, function: 'rewards:fmt'}"))
    by_path = make_cfg(tmp_path, _terms("{name: correct, function: by_data_source, correctness: true}",
                                        "{name: format, function: 'rewards.py:fmt'}"))
    with Scorer.from_config(by_module) as scorer:
        assert scorer.score(ROWS[:1], [r"\boxed{12}"]).values["format"] == [1.0]
    for cfg in (by_module, by_path):
        assert {n for n, s in STAGES.items() if local_files(cfg, s) == ["rewards.py"]} == \
            {"build-demos", "train", "evaluate"}
    before = {n: fingerprint(by_path, s) for n, s in STAGES.items()}
    rewards_file.write_text(USER_REWARDS + "\n# tuned\n")
    after = {n: fingerprint(by_path, s) for n, s in STAGES.items()}
    assert {n for n in STAGES if after[n] != before[n]} == {"build-demos", "train", "evaluate"}


def test_training_logs_each_term_and_survives_a_failing_one(project, rewards_file):
    """A short RL run with a format term and a term that always raises: both are in the curve and the metrics,
    the failures are counted per rollout, the run finishes."""
    from bridgerl.stages import train

    cfg = make_cfg(project, "train.method=rl_zero", "train.steps=2", _terms(
        "{name: correct, function: by_data_source, correctness: true}",
        "{name: format, function: 'rewards.py:fmt', weight: 0.1}", "{name: boom, function: 'rewards.py:boom'}"))
    out = train.run(cfg, progress=False)
    rollouts = cfg.train.prompt_batch * cfg.train.grpo.group_size
    assert out["reward_failures/boom"] == 2 * rollouts and out["reward_failures/format"] == 0
    assert 0.0 <= out["reward/format_last10"] <= 1.0
    with open(cfg.train.plots_file) as f:
        curve = list(csv.DictReader(f))
    assert [float(r["reward_failures/boom"]) for r in curve] == [rollouts] * 2
    for r in curve:
        assert math.isclose(float(r["reward_mean"]), float(r["accuracy"]) + 0.1 * float(r["reward/format"]),
                            abs_tol=1e-6)
    assert json.loads(open(cfg.train.metrics_file).read())["reward_failures/boom"] == 2 * rollouts


@pytest.mark.slow
def test_readme_example_trains_bridge_on_a_custom_task_with_a_custom_verifier(tmp_path):
    """The README's "Your own task and reward" block, as written, in an empty directory: every stage runs, the
    user's terms are in the metrics, the evaluation judges the custom benchmark with the user's term."""
    import re
    import subprocess
    import sys

    from conftest import REPO

    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Your own task and reward"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    bindir = tmp_path / "bin"  # `bridgerl` as this checkout's
    bindir.mkdir()
    (bindir / "bridgerl").write_text(f"#!/bin/sh\nexec {sys.executable} -m bridgerl \"$@\"\n")
    (bindir / "bridgerl").chmod(0o755)
    work = tmp_path / "mytask"
    work.mkdir()
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(REPO / "src"),
           "BRIDGERL_TORCH_THREADS": os.environ.get("BRIDGERL_TORCH_THREADS", "1")}
    p = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=work, env=env, capture_output=True, text=True,
                       timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]
    train = json.loads((work / "metrics/train.json").read_text())
    assert train["method"] == "bridge" and train["steps"] == 20
    assert {f"reward/{n}_last10" for n in ("metres", "format", "concise")} <= train.keys()
    assert train["reward/concise_last10"] < 0 and train["reward_failures/metres"] == 0
    demos = (work / "data/demos/demos.jsonl").read_text().splitlines()
    assert len(demos) == 64, "every worked solution passes the user's correctness term"
    ev = json.loads((work / "metrics/eval.json").read_text())
    assert set(ev["benchmarks"]) == {"metres"} and ev["benchmarks"]["metres"]["n"] == 40
