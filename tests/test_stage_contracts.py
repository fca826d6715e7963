"""The one table of stages: generated files are current, code deps follow imports, each stage reads
only what its contract declares (checked by running every stage with a recording configuration), and
a stage's configuration slice changes exactly when something it reads changes."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import REPO, make_cfg

from bridgerl import config as C
from bridgerl.codegen import files as generate
from bridgerl.codegen.imports import code_deps, import_closure
from bridgerl.config.base import _Section
from bridgerl.core.keys import get as lookup
from bridgerl.core.stage_table import STAGES
from bridgerl.stages.resolve_config import fingerprint


def test_generated_files_are_current():
    """dvc.yaml, docs/stages.md and docs/params.md equal what `bridgerl generate` writes."""
    stale = [str(p.relative_to(REPO)) for p, text in generate.outputs(REPO).items()
             if not p.exists() or p.read_text() != text]
    assert not stale, f"{stale} stale: run `bridgerl generate` and commit"


def test_generate_check_names_a_stale_file(tmp_path, capsys):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    assert generate.main(tmp_path) == 0 and generate.main(tmp_path, check=True) == 0
    dvc = tmp_path / "dvc.yaml"
    dvc.write_text(dvc.read_text().replace("    - eval.batch_size\n", "", 1))  # train's params lose a key
    assert generate.main(tmp_path, check=True) == 1
    assert "dvc.yaml is stale" in capsys.readouterr().err


def _covered(path: str, deps: list[str]) -> bool:
    """A file or package is a dependency itself, or lies in a package directory that is one."""
    return any(d in (path, path + ".py") or path.startswith(d + "/") for d in deps)


def test_train_code_deps_follow_its_imports():
    """Fixing a verifier reruns training: rewards/, generation.py, prompts.py are train's code."""
    deps = code_deps(STAGES["train"])
    for d in ("src/bridgerl/rewards", "src/bridgerl/rollout/generation.py", "src/bridgerl/model/prompts.py",
              "src/bridgerl/train/trainer.py", "src/bridgerl/train/updates.py", "src/bridgerl/stages/train.py",
              "src/bridgerl/config"):
        assert _covered(d, deps), d
    # prepare does not import the trainer or the verifiers (the configuration does import the method table)
    prep = code_deps(STAGES["prepare"])
    assert "src/bridgerl/train/trainer.py" not in prep and "src/bridgerl/train" not in prep
    assert not [d for d in prep if d.startswith("src/bridgerl/rewards")]
    # the closure is transitive: evaluate reaches rewards through bridgerl.evaluation
    assert REPO / "src/bridgerl/rewards/math_answer.py" in import_closure("bridgerl.stages.evaluate")


def test_dvc_yaml_deps_params_outs_match_the_table():
    import yaml

    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert list(dvc) == ["resolve-config", *STAGES]
    cfg = C.load_config(REPO / "params.yaml")
    values = cfg.model_dump(mode="json")
    for name, s in STAGES.items():
        st = dvc[name]
        assert st["cmd"] == f"bridgerl {name}"
        assert st["params"] == [k for k in s.params if generate._in_params_file(REPO, k)], name
        for k in ("seed", "model.dtype", "eval.batch_size"):  # the keys the first dvc.yaml missed
            assert k not in s.params or k in st["params"], (name, k)
        assert set(code_deps(s)) <= set(st["deps"]), name
        assert f"resolved/{name}.json" in st["deps"], name
        for x in s.inputs:
            assert str(lookup(values, x.key)) in st["deps"], (name, x.key)
        outs = [*st.get("outs", []), *st.get("metrics", []), *[next(iter(p)) for p in st.get("plots", [])]]
        assert len(outs) == len(s.outputs) + len(s.metrics) + len(s.plots), name
        assert not any(isinstance(o, dict) and any(v.get("cache") is False for v in o.values()) for o in outs)
    assert f"resolved/{'register'}.json" in dvc["resolve-config"]["outs"]


class _Recorder:
    """Records every configuration key read (attribute access on a config section) while active."""

    def __init__(self, cfg):
        self.paths: dict[int, str] = {}
        self.seen: set[str] = set()
        self._walk(cfg, "")

    def _walk(self, obj, path):
        if isinstance(obj, _Section):
            self.paths[id(obj)] = path
            for k in type(obj).model_fields:
                self._walk(object.__getattribute__(obj, k), f"{path}.{k}" if path else k)
        elif isinstance(obj, (list, tuple)):
            for x in obj:
                self._walk(x, path)
        elif isinstance(obj, dict):
            for x in obj.values():
                self._walk(x, path)

    def __enter__(self):
        orig = self._orig = _Section.__getattribute__
        rec = self

        def getattribute(obj, name):
            value = orig(obj, name)
            if name in type(obj).model_fields and id(obj) in rec.paths:
                p = rec.paths[id(obj)]
                rec.seen.add(f"{p}.{name}" if p else name)
            return value

        _Section.__getattribute__ = getattribute
        return self

    def __exit__(self, *exc):
        _Section.__getattribute__ = self._orig


@pytest.mark.slow
def test_each_stage_reads_only_what_its_contract_declares(tmp_path):
    """Run the whole chain in-process; every key a stage reads is in its contract."""
    from bridgerl.stages import build_demos, evaluate, init_model, prepare, register, train

    cfg = make_cfg(tmp_path, "tracking.enabled=true", "train.eval_every=2", "train.eval_items=4",
                   f"tracking.uri=sqlite:///{tmp_path}/mlruns.db", "registry.max_retries=0")
    runs = [("prepare", lambda: prepare.run(cfg)), ("init-model", lambda: init_model.run(cfg)),
            ("build-demos", lambda: build_demos.run(cfg)), ("train", lambda: train.run(cfg, progress=False)),
            ("evaluate", lambda: evaluate.run(cfg)), ("register", lambda: register.run(cfg))]
    undeclared = {}
    for name, fn in runs:
        with _Recorder(cfg) as rec:
            fn()
        assert rec.seen, name
        bad = sorted(k for k in rec.seen if not STAGES[name].declares(k))
        if bad:
            undeclared[name] = bad
    assert not undeclared, f"stages read keys their contract does not declare: {undeclared}"


def test_recorder_catches_an_undeclared_read(tmp_path):
    """The check above can fail: a read of a key outside the contract is seen."""
    cfg = make_cfg(tmp_path)
    with _Recorder(cfg) as rec:
        _ = cfg.train.bridge.lam
    assert rec.seen == {"train", "train.bridge", "train.bridge.lam"}
    assert not STAGES["prepare"].declares("train.bridge.lam") and STAGES["train"].declares("train.bridge.lam")


def test_slices_change_only_for_the_stages_that_read_the_change(tmp_path):
    base = {n: fingerprint(make_cfg(tmp_path), s) for n, s in STAGES.items()}

    def changed(*overrides):
        cfg = make_cfg(tmp_path, *overrides)
        return {n for n, s in STAGES.items() if fingerprint(cfg, s) != base[n]}

    assert changed("train.lr_theta=0.5") == {"train"}
    assert changed("train.method=sft") == {"train", "register"}
    assert changed("eval.max_new_tokens=7") == {"train", "evaluate", "register"}
    assert changed("model.dtype=float32") == {"init-model", "build-demos", "train", "evaluate", "register"}
    assert changed("seed=3") == {"prepare", "init-model", "build-demos", "train", "evaluate"}
    assert changed("tracking.experiment=other", "registry.max_retries=9") == {"register"}
    # a preset's values land in the slices of the stages that read them
    # (keys params.yaml leaves to the preset)
    assert {"build-demos", "train"} <= changed("preset=qwen2.5-3b", "train.grpo.mini_batches=1")


def test_local_data_file_is_in_prepare_fingerprint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    f = tmp_path / "mine.jsonl"
    f.write_text(json.dumps({"id": "a", "problem": "1+1?", "answer": "2"}) + "\n")
    src = "data.rl_sources=[{name: mine, kind: local, path: mine.jsonl}]"
    cfg = make_cfg(tmp_path, src)
    before = {n: fingerprint(cfg, s) for n, s in STAGES.items()}
    assert before["prepare"]["files"] == {"mine.jsonl": before["prepare"]["files"]["mine.jsonl"]}
    f.write_text(json.dumps({"id": "a", "problem": "1+2?", "answer": "3"}) + "\n")
    after = {n: fingerprint(cfg, s) for n, s in STAGES.items()}
    assert {n for n in STAGES if after[n] != before[n]} == {"prepare"}


def test_local_model_base_is_an_init_model_dependency(tmp_path, monkeypatch):
    """New weights at the same model.base path rerun init-model (and only it, of the stages before train)."""
    from bridgerl.stages.resolve_config import local_files

    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.gguf").write_bytes(b"GGUF one")
    cfg = make_cfg(tmp_path, "model.base=m.gguf")
    assert local_files(cfg, STAGES["init-model"]) == ["m.gguf"]
    before = fingerprint(cfg, STAGES["init-model"])
    (tmp_path / "m.gguf").write_bytes(b"GGUF two")
    assert fingerprint(cfg, STAGES["init-model"]) != before
    pkg = make_cfg(tmp_path, "model.base=package:pytest/__init__.py")  # a machine-specific path: not a DVC dep
    assert local_files(pkg, STAGES["init-model"]) == []


def test_io_overrides_by_artifact_name(tmp_path):
    assert STAGES["train"].io_overrides(["dataset=/a", "curve=/b.csv"]) == [
        "data.out_dir=/a", "train.plots_file=/b.csv"]
    with pytest.raises(KeyError, match="no artifact 'nope'"):
        STAGES["train"].io_overrides(["nope=/x"])


def test_resolve_config_rejects_a_typo_and_writes_nothing(tmp_path):
    from conftest import run_cli

    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    p = run_cli("resolve-config", "-S", "train.stpes=3", cwd=tmp_path, check=False)
    assert p.returncode == 2 and "train.stpes = 3: unknown key" in p.stderr
    assert not (tmp_path / "resolved").exists()
    run_cli("resolve-config", cwd=tmp_path)
    got = json.loads((tmp_path / "resolved" / "train.json").read_text())
    assert got["config"]["train"]["steps"] == C.load_config(REPO / "params.yaml").train.steps
    assert "data" not in got["config"] and "registry" not in got["config"]
    full = json.loads((tmp_path / "resolved" / "config.json").read_text())
    assert C.Config.model_validate(full) == C.load_config(REPO / "params.yaml")


def test_every_parameter_is_described():
    """Each configuration field carries `Field(description=...)`, which docs/params.md is made from."""
    from pydantic import BaseModel

    missing = []
    for name, cls in vars(C).items():
        if isinstance(cls, type) and issubclass(cls, _Section) and cls is not _Section:
            for k, f in cls.model_fields.items():
                nested = isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)
                if not nested and not (f.description or "").strip():
                    missing.append(f"{name}.{k}")
    assert not missing, missing
    md = generate.params_md()
    for key in ("`train.bridge.lam`", "`eval.benchmarks`", "`demos.endpoint.api_key_env`", "`<source>.kind`"):
        assert key in md, key
    lam = next(line for line in md.splitlines() if line.startswith("| `train.bridge.lam`"))
    assert "0.5" in lam and C.BridgeConfig.model_fields["lam"].description in lam


def test_a_changed_preset_reruns_exactly_the_stages_that_read_what_it_changed(tmp_path):
    """Presets are dependencies through the slices: editing a preset's training value changes only
    train's fingerprint; the schema (config/) is in every stage's code."""
    preset = tmp_path / "mine.yaml"
    preset.write_text("train: {weight_decay: 0.01}\n")
    before = {n: fingerprint(make_cfg(tmp_path, f"preset={preset}"), s) for n, s in STAGES.items()}
    preset.write_text("train: {weight_decay: 0.02}\n")
    after = {n: fingerprint(make_cfg(tmp_path, f"preset={preset}"), s) for n, s in STAGES.items()}
    assert {n for n in STAGES if before[n] != after[n]} == {"train"}
    assert all(_covered("src/bridgerl/config/schema.py", code_deps(s)) for s in STAGES.values())
