"""The one table of `bridgerl` commands: one record each, holding its arguments, what it writes (locked),
whether it logs to MLflow (the tracking server must answer first), whether it computes with torch (threads
sized to its share of the cores), its checks and what it runs. `bridgerl.cli.main` looks the command up.

A stage command's outputs come from the stage table (`Stage.writes`); its module does the work.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from bridgerl.cli.output import emit
from bridgerl.config import Config, ConfigError
from bridgerl.core import keys
from bridgerl.core.io import DataError
from bridgerl.core.stage_table import STAGES, Stage

RUNS_DIR = Path("runs")  # ad-hoc runs (train --max-steps/--run, compare, evaluate --predictions); git-ignored

Args = argparse.Namespace


def _none(*_) -> None:
    return None


def _in_place(args: Args, argv: list[str], cfg: Config) -> tuple[Config, list[str]]:
    return cfg, argv


def _stage_writes(name: str, cfg: Config) -> list[str]:
    """The paths stage `name` writes (the stage table's `Stage.writes`)."""
    return [str(keys.get_attr(cfg, k)) for k in STAGES[name].writes]


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    run: Callable[[Args, Config], int | None]  # emits the result; returns the exit code (None: 0)
    arguments: Callable[[argparse.ArgumentParser], None] = _none
    tracked: bool = False  # logs to MLflow: the tracking server must answer before it starts
    compute: bool = False  # computes with torch: sizes its threads (bridgerl.core.threads)
    outputs: Callable[[Args, Config], list[str]] | None = None  # what it writes; None: the stage table's
    check: Callable[[Args, Config], None] = _none  # arguments that would otherwise fail deep inside
    place: Callable[[Args, list[str], Config], tuple[Config, list[str]]] = _in_place  # ad-hoc outputs
    configured: bool = True  # reads params.yaml (generate does not)

    @property
    def stage(self) -> Stage | None:
        return STAGES.get(self.name)

    def writes(self, args: Args, cfg: Config) -> list[str]:
        """What the command writes (each is locked against a second bridgerl process)."""
        if self.outputs is not None:
            return self.outputs(args, cfg)
        return _stage_writes(self.name, cfg) if self.stage else []


def _stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


# --------------------------------------------------------------------------------------------
# config, plan, resolve-config, generate
# --------------------------------------------------------------------------------------------
def _config(args: Args, cfg: Config) -> None:
    import yaml

    emit(yaml.safe_dump(cfg.loggable(), sort_keys=False))  # secrets redacted


def _plan_args(p) -> None:
    p.add_argument("--gpu-memory-gb", type=float, default=80.0,
                   help="memory of one GPU (with --device cpu: of the machine) in GiB (default: 80)")
    p.add_argument("--device", choices=("gpu", "cpu"), default="gpu",
                   help="gpu (default): the per-GPU budget; cpu: the training process's peak on a CPU-only machine")
    p.add_argument("--nproc", type=int, default=None, help="GPUs / processes (default: train.distributed.nproc)")
    p.add_argument("--prompt-tokens", type=int, default=256, help="longest prompt, in tokens (default: 256)")
    p.add_argument("--json", action="store_true", help="the budget as JSON")


def _plan(args: Args, cfg: Config) -> int:
    from bridgerl.train import plan

    text, fits = plan.main(cfg, args.gpu_memory_gb, args.nproc, args.json, args.prompt_tokens, args.device)
    emit(text)
    return 0 if fits else 1


def _resolve_args(p) -> None:
    p.add_argument("--out", default=None, help="directory (default: resolved)")
    p.add_argument("--tasks", action="store_true", help="also write each Kubeflow task's configuration")


def _resolve(args: Args, cfg: Config) -> None:
    from bridgerl.stages import resolve_config

    emit(resolve_config.run(cfg, args.out or resolve_config.RESOLVED_DIR, tasks=args.tasks))


def _generate_args(p) -> None:
    p.add_argument("--check", action="store_true", help="exit 1 naming each file that differs; write nothing")
    p.add_argument("--root", default=".", help="project root (default: .)")


def _generate(args: Args, cfg: None) -> int:
    from bridgerl.codegen import files

    return files.main(args.root, check=args.check)


# --------------------------------------------------------------------------------------------
# the pipeline's stages
# --------------------------------------------------------------------------------------------
def _prepare(args: Args, cfg: Config) -> None:
    from bridgerl.stages import prepare

    emit(prepare.run(cfg)["rl"]["steps"])


def _init_model(args: Args, cfg: Config) -> None:
    from bridgerl.stages import init_model

    emit(init_model.run(cfg))


def _build_demos(args: Args, cfg: Config) -> int:
    from bridgerl.stages import build_demos

    try:
        emit(build_demos.run(cfg)["counts"])
    except build_demos.GenerationFailed as e:
        print(f"bridgerl build-demos: error: {e}", file=sys.stderr)
        return 1
    return 0


def _train_args(p) -> None:
    p.add_argument("--max-steps", type=int, default=None,
                   help="stop after N iterations (a smoke run: in its own runs/ directory unless --resume)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint of this run")
    p.add_argument("--run", default=None, metavar="NAME",
                   help="an ad-hoc run: model, checkpoints, metrics and curve in runs/NAME/, the pipeline's "
                        "outputs untouched (default with --max-steps: runs/train-<time>)")
    p.add_argument("--nproc", type=int, default=None, help="spawn torchrun with N processes on this node")


def _train_place(args: Args, argv: list[str], cfg: Config) -> tuple[Config, list[str]]:
    """`train --max-steps` (not resuming) or `--run NAME` writes to runs/NAME/, never over the pipeline's outputs."""
    if not (args.run or (args.max_steps is not None and not args.resume)):
        return cfg, argv
    if not args.run:
        args.run = f"train-{_stamp()}"
        argv = [*argv, "--run", args.run]  # so that torchrun's workers use the same directory
    root = RUNS_DIR / args.run
    pipeline_out = cfg.train.out_dir
    cfg = cfg.model_copy(deep=True)
    t = cfg.train
    t.out_dir, t.checkpoint_dir = str(root / "model"), str(root / "checkpoints")
    t.metrics_file, t.plots_file = str(root / "train.json"), str(root / "curve.csv")
    if "LOCAL_RANK" not in os.environ and not args.resume:  # once: not in the torchrun workers it starts
        print(f"bridgerl train: ad-hoc run {args.run!r}: outputs in {root}/ (the pipeline's {pipeline_out!r} "
              f"is untouched; resume with --resume --run {args.run})", file=sys.stderr)
    return cfg, argv


def _train_check(args: Args, cfg: Config) -> None:
    from bridgerl.core.io import require_writable
    from bridgerl.stages import train_preflight

    require_writable(cfg.train.checkpoint_dir, "train.checkpoint_dir")  # written from the first steps on
    train_preflight.check(cfg, resume=args.resume, run=args.run)


def _train(args: Args, cfg: Config) -> None:
    from bridgerl.stages import train
    from bridgerl.train.parallel import detect

    final = train.run(cfg, max_steps=args.max_steps, resume=args.resume)
    if detect().is_main:
        emit(final)


def _model_and_repair(p) -> None:
    p.add_argument("--model", default=None, help="model directory (default: train.out_dir)")
    p.add_argument("--repair", action="store_true",
                   help="register nothing: remove what killed or racing registrations left (duplicate or abandoned "
                        "versions, runs left RUNNING, logged models no version uses)")


def _evaluate_args(p) -> None:
    _model_and_repair(p)
    p.add_argument("--predictions", default=None, help="score a JSONL of {id, output} without loading a model")
    p.add_argument("--benchmark", default=None, help="benchmark name for --predictions")
    p.add_argument("--data", default=None,
                   help="benchmark file (id, problem, answer) for --predictions (default: the prepared copy, "
                        "else the configured source)")
    p.add_argument("--merge", action="store_true",
                   help="with --predictions: add the benchmark to the existing OUT/eval.json")
    p.add_argument("--out", default=None,
                   help="with --predictions: directory for <benchmark>.jsonl and eval.json (default: runs/predictions; "
                        "never the pipeline's eval.out_dir, which belongs to the trained model)")


def _evaluate_place(args: Args, argv: list[str], cfg: Config) -> tuple[Config, list[str]]:
    if args.predictions and args.out is None:
        from bridgerl.stages.evaluate import PREDICTIONS_OUT

        args.out = PREDICTIONS_OUT
    return cfg, argv


def _evaluate_outputs(args: Args, cfg: Config) -> list[str]:
    return [args.out] if args.predictions else _stage_writes("evaluate", cfg)


def _evaluate(args: Args, cfg: Config) -> None:
    from bridgerl.stages import evaluate

    if args.predictions:
        if not args.benchmark:
            raise ConfigError("evaluate --predictions needs --benchmark NAME")
        summary = evaluate.score_predictions(cfg, args.predictions, args.benchmark, args.data, args.merge,
                                             out=args.out)
        m = summary["benchmarks"][args.benchmark]
        emit({"benchmark": args.benchmark, "accuracy": m["accuracy"], "n": m["n"], "missing": m["missing"],
              "out": summary["out"]})
    else:
        if args.benchmark or args.data or args.merge or args.out:
            raise ConfigError("--benchmark/--data/--merge/--out go with --predictions; "
                              "to evaluate a model on other benchmarks use -S eval.benchmarks=[...]")
        emit(evaluate.run(cfg, model_dir=args.model)["avg_accuracy"])


# --------------------------------------------------------------------------------------------
# serving a teacher, reports, the registry, comparisons
# --------------------------------------------------------------------------------------------
def _serve_args(p) -> None:
    p.add_argument("--model", default=None, help="model directory or hub id (default: demos.hf_model, else model.out_dir)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--name", default=None, help="model name clients send (default: demos.endpoint.model)")
    p.add_argument("--api-key-env", default=None, help="require the key held in this environment variable")


def _serve(args: Args, cfg: Config) -> None:
    from bridgerl.demos.serve import HFChatBackend, TeacherServer

    key = os.environ.get(args.api_key_env) if args.api_key_env else None
    if args.api_key_env and not key:
        raise ConfigError(f"--api-key-env {args.api_key_env}: the variable is not set")
    backend = HFChatBackend(args.model or cfg.demos.hf_model or cfg.model.out_dir,
                            name=args.name or cfg.demos.endpoint.model, dtype=cfg.model.dtype)
    server = TeacherServer(backend, args.host, args.port, api_key=key)
    print(f"serving {backend.name!r} on {server.base_url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


def _report_args(p) -> None:
    p.add_argument("--metrics", action="append", required=True, metavar="NAME=PATH",
                   help="a row: its name and an eval metrics JSON (repeatable)")
    p.add_argument("--out", required=True, help="directory for report.md / report.png / report.json")


def _report(args: Args, cfg: Config) -> None:
    from bridgerl.evaluation.report import parse_named, report_from_files

    paths = report_from_files(parse_named(args.metrics), Path(args.out))
    emit({k: str(v) for k, v in paths.items()})


def _out_dir(args: Args, cfg: Config) -> list[str]:
    return [args.out]


def _registry_call(command: str, fn: Callable[[], dict]) -> int:
    """register / promote / rollback: exit 1 when the promotion gate refuses, 3 on a registry error."""
    from bridgerl.tracking import client, registry

    try:
        out = fn()
    except registry.PromotionRefused as e:
        emit(e.details)
        print(f"bridgerl promote: refused: {e}", file=sys.stderr)
        return 1
    except client.RegistryError as e:
        print(f"bridgerl {command}: error: {e}", file=sys.stderr)
        return 3
    emit(out)
    return 0


def _register(args: Args, cfg: Config) -> int:
    from bridgerl.stages import register

    return _registry_call("register", lambda: register.repair(cfg) if args.repair
                          else register.run(cfg, model_dir=args.model))


def _promote_args(p) -> None:
    p.add_argument("--version", default=None, help="version to promote (default: the challenger)")
    p.add_argument("--force", action="store_true", help="promote even if the gate refuses (recorded in the history)")


def _promote(args: Args, cfg: Config) -> int:
    from bridgerl.tracking import registry

    return _registry_call("promote", lambda: registry.promote(cfg, version=args.version, force=args.force))


def _rollback(args: Args, cfg: Config) -> int:
    from bridgerl.tracking import registry

    return _registry_call("rollback", lambda: registry.rollback(cfg))


def _compare_args(p) -> None:
    from bridgerl.core.methods import METHOD_NAMES

    p.add_argument("--methods", default=None,
                   help=f"comma-separated subset of the methods (default: all of {', '.join(METHOD_NAMES)})")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default: 0,1,2,3,4)")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs trained at once, each in its own process with its share of the cores (default 1)")
    p.add_argument("--sweep", action="append", default=None, metavar="[METHOD:]KEY=V1,V2,...",
                   help="ablation: one arm per value of a configuration key for METHOD (default bridge), compared "
                        "with the method's own arm, e.g. train.bridge.lam=0,0.25,0.5,0.75,1 (repeatable)")
    p.add_argument("--out", default=None,
                   help="report directory (default: a new runs/compare-<time>; the committed report is docs/results)")
    p.add_argument("--report-only", action="store_true",
                   help="re-render the report from OUT/results.json (default OUT: docs/results)")


def _compare_place(args: Args, argv: list[str], cfg: Config) -> tuple[Config, list[str]]:
    if args.out is None:
        args.out = "docs/results" if args.report_only else str(RUNS_DIR / f"compare-{_stamp()}")
    return cfg, argv


def _compare_check(args: Args, cfg: Config) -> None:
    from bridgerl.core.methods import METHODS
    from bridgerl.stages.compare import make_arms, parse_sweeps

    if args.seeds:
        try:
            args.seeds = [int(x) for x in args.seeds.split(",")]
        except ValueError:
            raise ConfigError(f"--seeds {args.seeds!r}: expected comma-separated integers, e.g. 0,1,2") from None
    if args.methods:
        args.methods = [m.strip() for m in args.methods.split(",")]
        bad = [m for m in args.methods if m not in METHODS]
        if bad:
            raise ConfigError(f"--methods: unknown method(s) {', '.join(map(repr, bad))} "
                              f"(known: {', '.join(METHODS)})")
    if args.jobs < 1:
        raise ConfigError(f"--jobs {args.jobs}: expected 1 or more processes")
    args.sweeps = parse_sweeps(args.sweep)
    make_arms(cfg, args.methods or [], args.sweeps)  # unknown keys and invalid values fail here
    if args.report_only and not (Path(args.out) / "results.json").is_file():
        raise DataError(f"{Path(args.out) / 'results.json'}: not found; --report-only re-renders an earlier "
                        f"`bridgerl compare --out {args.out}`, run that first")


def _compare(args: Args, cfg: Config) -> None:
    from bridgerl.stages import compare

    if args.report_only:
        compare.rerender(cfg, args.out)
    else:
        compare.run(cfg, methods=args.methods or None, seeds=args.seeds or None, out=args.out,
                    sweeps=args.sweeps, jobs=args.jobs)
    emit(f"report: {args.out}/report.md")


COMMANDS: dict[str, Command] = {c.name: c for c in (
    Command("config", "print the resolved, validated configuration", _config),
    Command("plan", "per-GPU memory budget of the training configuration (exit 1: it does not fit)", _plan,
            _plan_args),
    Command("resolve-config", "validate the configuration; write it whole and each stage's slice (first DVC stage)",
            _resolve, _resolve_args),
    Command("generate", "write dvc.yaml, docs/stages.md and docs/params.md from the stage table and the "
            "configuration schema", _generate, _generate_args, configured=False),
    Command("prepare", "RL prompts + evaluation sets, deduplicated and split, with a data card", _prepare,
            tracked=True),
    Command("init-model", "build (embedded) or fetch the base model directory", _init_model, tracked=True,
            compute=True),
    Command("build-demos", "verified SFT demonstrations", _build_demos, tracked=True, compute=True),
    Command("serve-teacher", "serve a local model on an OpenAI-compatible /v1/chat/completions route", _serve,
            _serve_args, compute=True),
    Command("train", "train with train.method (BRIDGE or a baseline)", _train, _train_args, tracked=True,
            compute=True, check=_train_check, place=_train_place),
    Command("evaluate", "evaluate a model on eval.benchmarks, or score saved predictions", _evaluate, _evaluate_args,
            tracked=True, compute=True, outputs=_evaluate_outputs, place=_evaluate_place),
    Command("report", "markdown table + bar chart of eval metrics across models/methods", _report, _report_args,
            outputs=_out_dir),
    Command("register", "log and register the trained model in MLflow (alias challenger)", _register,
            _model_and_repair, tracked=True),
    Command("promote", "move alias champion to a version if it beats the current champion", _promote, _promote_args,
            tracked=True),
    Command("rollback", "move alias champion back to the previous champion", _rollback, tracked=True),
    Command("compare", "train every method on the same data/budget/seeds, evaluate, write a report", _compare,
            _compare_args, tracked=True, compute=True, outputs=_out_dir, check=_compare_check, place=_compare_place),
)}
