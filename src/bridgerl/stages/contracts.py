"""The one table of stages: what each `bridgerl <stage>` reads and writes.

Each `Stage` declares once
- `params`: the configuration keys it reads (a section name covers the whole section);
- `inputs` / `outputs` / `metrics` / `plots`: the configuration keys that hold its paths, each with the
  Kubeflow artifact name that carries it (`--io NAME=PATH` on the command line sets that key);
- its module, whose imports within `bridgerl` (computed, see `code_deps`) are its code.

Everything else is derived from this table: `dvc.yaml` and `docs/stages.md` (`bridgerl generate`,
a test checks they are current), the per-stage configuration slices that `bridgerl resolve-config`
writes (the first DVC stage, and the first Kubeflow task: each stage depends on its slice, so it
reruns exactly when something it reads changes, a preset or a schema default included), and the
artifact paths the Kubeflow components pass. A test runs every stage with a recording configuration
and fails when a stage reads a key its contract does not declare.
"""

from __future__ import annotations

import ast
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # src/bridgerl
RESOLVED_DIR = "resolved"  # resolve-config's outputs: one configuration slice per stage
# read by every stage but not part of any result: where results are logged, how many threads compute them
# (never a reason to rerun)
RUN_LEVEL = ("tracking", "threads")


@dataclass(frozen=True)
class IO:
    """A path a stage reads or writes: the configuration key holding it and its Kubeflow artifact name."""

    key: str
    artifact: str
    about: str = ""


@dataclass(frozen=True)
class Stage:
    name: str
    module: str
    about: str
    params: tuple[str, ...]
    inputs: tuple[IO, ...] = ()
    outputs: tuple[IO, ...] = ()
    metrics: tuple[IO, ...] = ()
    plots: tuple[IO, ...] = ()
    plot_axes: dict[str, str] = field(default_factory=dict)  # x/y of the plots (dvc.yaml)
    local_files: bool = False  # local data files named in its params are dependencies (by content)

    @property
    def io(self) -> tuple[IO, ...]:
        return (*self.inputs, *self.outputs, *self.metrics, *self.plots)

    def artifact_key(self, artifact: str) -> str:
        for x in self.io:
            if x.artifact == artifact:
                return x.key
        known = ", ".join(x.artifact for x in self.io)
        raise KeyError(f"stage {self.name} has no artifact {artifact!r} (known: {known})")

    def declares(self, key: str) -> bool:
        """Whether reading `key` is covered by this contract (a param, a path, or run-level)."""
        covered = (*self.params, *(x.key for x in self.io), *RUN_LEVEL)
        return any(key == c or key.startswith(c + ".") or c.startswith(key + ".") for c in covered)


STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("prepare", "bridgerl.stages.prepare",
          "RL prompts (`data.rl_sources`: embedded task, hub ids, local JSONL/parquet files, which are "
          "dependencies by content) and evaluation sets, deduplicated and split, with a data card",
          params=("seed", "data", "eval.benchmarks", "eval.sources"),
          outputs=(IO("data.out_dir", "dataset", "`rl_train.jsonl`, `rl_val.jsonl`, `eval/<benchmark>.jsonl` "
                      "(`id, problem, answer, data_source, source`), `data_card.json`, `data_card.md`"),),
          local_files=True),
    Stage("init-model", "bridgerl.stages.init_model",
          "the base model directory: the embedded tiny LM built and pre-trained, or a hub/local model",
          params=("seed", "model", "data.synthetic", "eval.prompt_template"),
          outputs=(IO("model.out_dir", "base_model", "a Hugging Face model directory + tokenizer, "
                      "`bridgerl_base.json`"),),
          local_files=True),
    Stage("build-demos", "bridgerl.stages.build_demos",
          "verified SFT demonstrations from the teacher (`demos.source`), decontaminated against the eval sets",
          params=("seed", "demos", "model.dtype", "rewards"),
          inputs=(IO("data.out_dir", "dataset", "`rl_train.jsonl` and `eval/` (decontamination)"),),
          outputs=(IO("demos.out_dir", "demos", "`demos.jsonl` (`id, problem, answer, response, data_source`), "
                      "`demo_card.json`, `demo_card.md`; teacher samples are journaled in `demos.journal_dir` "
                      "(default `<out_dir>.partial`, a resumable cache, not an output)"),),
          local_files=True),
    Stage("train", "bridgerl.stages.train",
          "train with `train.method` (BRIDGE or a baseline); checkpoints in `train.checkpoint_dir` (`--resume`)",
          params=("seed", "train", "model.dtype", "eval.prompt_template", "eval.use_chat_template",
                  "eval.max_new_tokens", "eval.batch_size", "rewards"),
          inputs=(IO("data.out_dir", "dataset", "prepared data"), IO("demos.out_dir", "demos", "demonstrations"),
                  IO("model.out_dir", "base_model", "the base model")),
          outputs=(IO("train.out_dir", "model", "θ with w merged (no LoRA or shadow weights)"),),
          metrics=(IO("train.metrics_file", "metrics", "final training metrics"),),
          plots=(IO("train.plots_file", "curve", "the training curve (one row per step)"),),
          plot_axes={"x": "step", "y": "heldout_accuracy"}, local_files=True),
    Stage("evaluate", "bridgerl.stages.evaluate",
          "accuracy of the trained model on `eval.benchmarks` (each data source's correctness term in "
          "`rewards.terms`: by default math-verify / exact match)",
          params=("seed", "eval", "model.dtype", "rewards"),
          inputs=(IO("train.out_dir", "model", "the trained model"),
                  IO("data.out_dir", "dataset", "the prepared evaluation sets")),
          outputs=(IO("eval.out_dir", "predictions", "`<benchmark>.jsonl`, one scored item per line"),),
          metrics=(IO("eval.metrics_file", "metrics", "accuracy per benchmark and `avg_accuracy`"),),
          local_files=True),
    Stage("register", "bridgerl.stages.register",
          "log the trained model to MLflow and register a version with alias `challenger` "
          "(and `champion` if `registry.auto_promote` and the gate passes); `dvc.lock`, when present, for "
          "provenance tags",
          params=("registry", "train.method", "train.steps", "train.epochs", "model.base", "model.revision",
                  "model.dtype", "data.rl_sources", "demos.source", "eval.prompt_template",
                  "eval.use_chat_template", "eval.max_new_tokens", "eval.temperature", "eval.top_p"),
          inputs=(IO("train.out_dir", "model", "the trained model"),
                  IO("eval.metrics_file", "eval_metrics", "its evaluation")),
          metrics=(IO("registry.out_file", "registration",
                      "`name, version, run_id, model_uri, key, resumed, aliases, metric, promotion`"),)),
)}

PLOTS = [  # dvc.yaml's top-level plots over the training curve
    {"reward and held-out accuracy": {"x": "step", "y": {"train.plots_file": ["reward_mean", "heldout_accuracy"]}}},
    {"sft loss and cooperative gain": {"x": "step", "y": {"train.plots_file": ["sft_nll", "coop_gain"]}}},
]


# --------------------------------------------------------------------------------------------
# configuration slices
# --------------------------------------------------------------------------------------------
def lookup(tree: dict, key: str) -> Any:
    node: Any = tree
    for part in key.split("."):
        node = node[part]
    return node


def lookup_attr(cfg, key: str) -> Any:
    """`cfg.a.b` for key `a.b` (reads only that key, unlike a dump of the whole configuration)."""
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _put(tree: dict, key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[last] = value


def config_slice(cfg, stage: Stage) -> dict:
    """The resolved values of the keys `stage` reads (its `params`), as a nested mapping that validates
    as a configuration on its own (paths and run-level settings are set by whoever runs the stage)."""
    full = cfg.model_dump(mode="json")
    out: dict = {}
    for key in stage.params:
        _put(out, key, lookup(full, key))
    return out


def task_config(cfg, stage: Stage) -> dict:
    """What a Kubeflow task receives as its whole configuration: its slice plus the run-level
    sections (where to log). Nothing else reaches it, so its cache key changes only with these."""
    out = config_slice(cfg, stage)
    full = cfg.model_dump(mode="json")
    for key in RUN_LEVEL:
        _put(out, key, lookup(full, key))
    return out


def local_files(cfg, stage: Stage) -> list[str]:
    """Local files this stage reads (named in data.rl_sources / eval.sources / demos.dataset; init-model: a
    local model.base file or directory, not a file inside an installed package, whose path is the machine's;
    the stages that score: the source files of user reward terms, `reward_file`)."""
    if not stage.local_files:
        return []
    found: set[str] = set()
    if "rewards" in stage.params:
        found.update(f for t in cfg.rewards.terms if (f := reward_file(t.function)))
    if stage.name == "init-model":
        m = cfg.model
        if m.base == "embedded" or m.base.startswith("package:"):
            return []
        p = Path(m.base) / m.gguf_file if m.gguf_file else Path(m.base)
        return [str(p)] if p.exists() else []
    specs = []
    if stage.name == "prepare":
        specs = [*cfg.data.rl_sources, *cfg.eval.sources.values()]
    elif stage.name == "build-demos" and cfg.demos.source == "dataset" and cfg.demos.dataset is not None:
        specs = [cfg.demos.dataset]
    found.update(str(s.path) for s in specs if s.kind == "local" and s.path)
    return sorted(found)


def reward_file(ref: str, base: Path = Path(".")) -> str | None:
    """The local source file of a user reward term (`rewards.terms.N.function`: 'file.py:fn', or 'module:fn' of a
    module under `base`), or None: a built-in (no ':'), an installed package's module (the environment's
    version), a file that is not there (the stage reports it)."""
    if ":" not in ref:
        return None
    target = ref.rsplit(":", 1)[0]
    if target.endswith(".py"):
        return target if (base / target).is_file() else None
    import importlib.util

    try:
        spec = importlib.util.find_spec(target)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not Path(spec.origin).is_file():
        return None
    try:
        return str(Path(spec.origin).resolve().relative_to(base.resolve()))
    except ValueError:
        return None


def file_digest(path: Path) -> str:
    """md5 of a file, or of a directory's files (names and contents), as DVC would see a change."""
    h = hashlib.md5()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else "").encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def fingerprint(cfg, stage: Stage, base: Path = Path(".")) -> dict:
    """What a stage's DVC dependency file holds: its configuration slice and the digests of the local
    data files it reads, so a changed value, preset, default or file reruns it (and nothing else does)."""
    return {"stage": stage.name, "config": config_slice(cfg, stage),
            "files": {p: file_digest(base / p) for p in local_files(cfg, stage)}}


def io_overrides(stage: Stage, pairs: list[str]) -> list[str]:
    """`--io NAME=PATH` items → `-S key=PATH` overrides through the stage's contract."""
    out = []
    for item in pairs:
        if "=" not in item:
            raise KeyError(f"--io {item!r} is not NAME=PATH")
        name, path = item.split("=", 1)
        out.append(f"{stage.artifact_key(name)}={path}")
    return out


# --------------------------------------------------------------------------------------------
# code dependencies
# --------------------------------------------------------------------------------------------
def _module_file(mod: str) -> Path | None:
    if mod != "bridgerl" and not mod.startswith("bridgerl."):
        return None
    rel = Path(*mod.split(".")[1:])
    for cand in (PACKAGE_DIR / rel / "__init__.py", (PACKAGE_DIR / rel).with_suffix(".py")):
        if cand.is_file():
            return cand
    return None


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE_DIR).with_suffix("")
    parts = ["bridgerl", *rel.parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Modules within bridgerl that `path` imports anywhere (top level or inside functions)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join([*base, *([node.module] if node.module else [])])
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)  # `from pkg import module`
    return {m for m in found if _module_file(m) is not None}


def import_closure(module: str) -> list[Path]:
    """Files of every bridgerl module `module` imports, transitively, with their packages' __init__."""
    todo, seen = [module], set()
    files: set[Path] = set()
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        parts = mod.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__, a/b/__init__
            f = _module_file(".".join(parts[:i]))
            if f is not None and f not in files:
                files.add(f)
                todo.extend(_imports(f))
    return sorted(files)


def code_deps(stage: Stage) -> list[str]:
    """The stage's code as DVC dependencies (paths like `src/bridgerl/rewards`): a package directory
    when the stage imports all its modules, else the files. The package's own __init__.py and cli.py
    (dispatch only) are left out."""
    root = PACKAGE_DIR.parents[1]
    files = {f for f in import_closure(stage.module) if f != PACKAGE_DIR / "__init__.py"}
    out: list[Path] = []
    for d in sorted({f.parent for f in files}):
        mine = {f for f in files if f.parent == d}
        if d != PACKAGE_DIR and mine == set(d.glob("*.py")) and not any(x.is_dir() and x.name != "__pycache__"
                                                                          for x in d.iterdir()):
            out.append(d)
        else:
            out.extend(sorted(mine))
    return sorted(str(p.relative_to(root)) for p in out)
