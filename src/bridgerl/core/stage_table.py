"""The one table of stages: what each `bridgerl <stage>` reads and writes, and the files in between.

- `File`: a file (or folder) inside a directory the pipeline passes between stages, by name, with the
  MLflow dataset context it is logged under when a stage reads it.
- `Dir`: such a directory: the configuration key holding its path, its lineage key (the content hash
  tags `bridgerl.input.<lineage>` / `bridgerl.output.<lineage>` in MLflow) and its files.
- `Stage`: the configuration keys it reads (`params`; a section name covers the whole section), its
  inputs / outputs / metrics / plots (`IO`: a configuration key with its Kubeflow artifact name; `--io
  NAME=PATH` sets that key), the data files it logs as MLflow dataset inputs (`reads`), what else it
  writes and locks (`state`, e.g. checkpoints), and its module, whose imports are its code.

Everything that names a stage's files reads them here: the stages themselves, lineage, the CLI's output
locks, `dvc.yaml` and `docs/stages.md` (`bridgerl generate`), the configuration slices of
`bridgerl resolve-config` (bridgerl.stages.resolve_config) and the Kubeflow components' artifact paths.
A test runs every stage with a recording configuration and fails when a stage reads a key its contract
does not declare. It imports only `core.keys`: every layer may read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bridgerl.core import keys

RESOLVED_DIR = "resolved"  # resolve-config's outputs: one configuration slice per stage
# read by every stage but not part of any result: where results are logged, how many threads compute them
# (never a reason to rerun)
RUN_LEVEL = ("tracking", "threads")


@dataclass(frozen=True)
class File:
    """A file or folder inside a `Dir`: its name, what it holds, and the MLflow dataset context a stage logs
    it under when it reads it (a folder: each of its `*.jsonl` files)."""

    name: str
    about: str = ""
    context: str | None = None

    def at(self, directory: str | Path) -> Path:
        return Path(directory) / self.name


@dataclass(frozen=True)
class Dir:
    """A directory passed between stages: the configuration key holding its path, its lineage key, its files."""

    key: str
    lineage: str
    files: tuple[File, ...] = ()

    def path(self, cfg) -> Path:
        return Path(keys.get_attr(cfg, self.key))

    def about(self) -> str:
        return ", ".join(f"`{f.name}`" + (f" ({f.about})" if f.about else "") for f in self.files)


# the files -------------------------------------------------------------------------------------
RECORD = "id, problem, answer, data_source, source"
RL_TRAIN = File("rl_train.jsonl", f"`{RECORD}`", context="training")
RL_VAL = File("rl_val.jsonl", "held out during training", context="validation")
EVAL_SETS = File("eval", "`<benchmark>.jsonl`, one per benchmark", context="evaluation")
DATA_CARD = File("data_card.json", "counts at each step, sources, statistics")
DATA_CARD_MD = File("data_card.md")
DEMOS_FILE = File("demos.jsonl", "`id, problem, answer, response, data_source`", context="demos")
DEMO_CARD = File("demo_card.json", "counts kept and dropped at each filter")
DEMO_CARD_MD = File("demo_card.md")
BASE_RECORD = File("bridgerl_base.json", "what the base model is, its source's sha256")

# the directories -------------------------------------------------------------------------------
PREPARED = Dir("data.out_dir", "prepared_data", (RL_TRAIN, RL_VAL, EVAL_SETS, DATA_CARD, DATA_CARD_MD))
DEMOS = Dir("demos.out_dir", "demos", (DEMOS_FILE, DEMO_CARD, DEMO_CARD_MD))
BASE_MODEL = Dir("model.out_dir", "base_model", (BASE_RECORD,))
TRAINED_MODEL = Dir("train.out_dir", "trained_model")
EVAL_OUTPUTS = Dir("eval.out_dir", "eval_outputs")
DIRS: dict[str, Dir] = {d.key: d for d in (PREPARED, DEMOS, BASE_MODEL, TRAINED_MODEL, EVAL_OUTPUTS)}


@dataclass(frozen=True)
class IO:
    """A path a stage reads or writes: the configuration key holding it and its Kubeflow artifact name."""

    key: str
    artifact: str
    about: str = ""

    @property
    def dir(self) -> Dir | None:
        return DIRS.get(self.key)


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
    reads: tuple[File, ...] = ()  # data files of its inputs it logs as MLflow dataset inputs
    state: tuple[str, ...] = ()  # keys of what else it writes (not a DVC output): locked like its outputs
    local_files: bool = False  # local data files named in its params are dependencies (by content)

    @property
    def io(self) -> tuple[IO, ...]:
        return (*self.inputs, *self.outputs, *self.metrics, *self.plots)

    @property
    def writes(self) -> tuple[str, ...]:
        """Configuration keys of everything it writes (each locked against a second bridgerl process)."""
        return (*(x.key for x in (*self.outputs, *self.metrics, *self.plots)), *self.state)

    def artifact_key(self, artifact: str) -> str:
        for x in self.io:
            if x.artifact == artifact:
                return x.key
        known = ", ".join(x.artifact for x in self.io)
        raise KeyError(f"stage {self.name} has no artifact {artifact!r} (known: {known})")

    def io_overrides(self, pairs: list[str]) -> list[str]:
        """`--io NAME=PATH` items → `key=PATH` overrides through this contract."""
        out = []
        for item in pairs:
            if "=" not in item:
                raise KeyError(f"--io {item!r} is not NAME=PATH")
            name, path = item.split("=", 1)
            out.append(f"{self.artifact_key(name)}={path}")
        return out

    def declares(self, key: str) -> bool:
        """Whether reading `key` is covered by this contract (a param, a path, or run-level)."""
        return any(keys.covers(c, key) for c in (*self.params, *(x.key for x in self.io), *self.state, *RUN_LEVEL))


STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("prepare", "bridgerl.stages.prepare",
          "RL prompts (`data.rl_sources`: embedded task, hub ids, local JSONL/parquet files, which are "
          "dependencies by content) and evaluation sets, deduplicated and split, with a data card",
          params=("seed", "data", "eval.benchmarks", "eval.sources"),
          outputs=(IO(PREPARED.key, "dataset", PREPARED.about()),),
          local_files=True),
    Stage("init-model", "bridgerl.stages.init_model",
          "the base model directory: the embedded tiny LM built and pre-trained, or a hub/local model",
          params=("seed", "model", "data.synthetic", "eval.prompt_template"),
          outputs=(IO(BASE_MODEL.key, "base_model", f"a Hugging Face model directory + tokenizer, {BASE_MODEL.about()}"),),
          local_files=True),
    Stage("build-demos", "bridgerl.stages.build_demos",
          "verified SFT demonstrations from the teacher (`demos.source`), decontaminated against the eval sets",
          params=("seed", "demos", "model.dtype", "rewards"),
          inputs=(IO(PREPARED.key, "dataset", f"`{RL_TRAIN.name}` and `{EVAL_SETS.name}/` (decontamination)"),),
          outputs=(IO(DEMOS.key, "demos", f"{DEMOS.about()}; teacher samples are journaled in `demos.journal_dir` "
                      "(default `<out_dir>.partial`, a resumable cache, not an output)"),),
          reads=(RL_TRAIN,), local_files=True),
    Stage("train", "bridgerl.stages.train",
          "train with `train.method` (BRIDGE or a baseline); checkpoints in `train.checkpoint_dir` (`--resume`)",
          params=("seed", "train", "model.dtype", "eval.prompt_template", "eval.use_chat_template",
                  "eval.max_new_tokens", "eval.batch_size", "rewards"),
          inputs=(IO(PREPARED.key, "dataset", "prepared data"), IO(DEMOS.key, "demos", "demonstrations"),
                  IO(BASE_MODEL.key, "base_model", "the base model")),
          outputs=(IO(TRAINED_MODEL.key, "model", "θ with w merged (no LoRA or shadow weights)"),),
          metrics=(IO("train.metrics_file", "metrics", "final training metrics"),),
          plots=(IO("train.plots_file", "curve", "the training curve (one row per step)"),),
          plot_axes={"x": "step", "y": "heldout_accuracy"}, reads=(RL_TRAIN, RL_VAL, DEMOS_FILE),
          state=("train.checkpoint_dir",), local_files=True),
    Stage("evaluate", "bridgerl.stages.evaluate",
          "accuracy of the trained model on `eval.benchmarks` (each data source's correctness term in "
          "`rewards.terms`: by default math-verify / exact match)",
          params=("seed", "eval", "model.dtype", "rewards"),
          inputs=(IO(TRAINED_MODEL.key, "model", "the trained model"),
                  IO(PREPARED.key, "dataset", "the prepared evaluation sets")),
          outputs=(IO(EVAL_OUTPUTS.key, "predictions", "`<benchmark>.jsonl`, one scored item per line"),),
          metrics=(IO("eval.metrics_file", "metrics", "accuracy per benchmark and `avg_accuracy`"),),
          reads=(EVAL_SETS,), local_files=True),
    Stage("register", "bridgerl.stages.register",
          "log the trained model to MLflow and register a version with alias `challenger` "
          "(and `champion` if `registry.auto_promote` and the gate passes); `dvc.lock`, when present, for "
          "provenance tags",
          params=("registry", "train.method", "train.steps", "train.epochs", "model.base", "model.revision",
                  "model.dtype", "data.rl_sources", "demos.source", "eval.prompt_template",
                  "eval.use_chat_template", "eval.max_new_tokens", "eval.temperature", "eval.top_p"),
          inputs=(IO(TRAINED_MODEL.key, "model", "the trained model"),
                  IO("eval.metrics_file", "eval_metrics", "its evaluation")),
          metrics=(IO("registry.out_file", "registration",
                      "`name, version, run_id, model_uri, key, resumed, aliases, metric, promotion`"),)),
)}

PLOTS = [  # dvc.yaml's top-level plots over the training curve
    {"reward and held-out accuracy": {"x": "step", "y": {"train.plots_file": ["reward_mean", "heldout_accuracy"]}}},
    {"sft loss and cooperative gain": {"x": "step", "y": {"train.plots_file": ["sft_nll", "coop_gain"]}}},
]
