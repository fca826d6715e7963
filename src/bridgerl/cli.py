"""`bridgerl <stage>`: the one entry point both orchestrators (DVC and Kubeflow) call.

Every command reads params.yaml (or --params), an optional --preset, and `-S key=value` overrides,
validates them into one Config before any work starts, then runs its stage module. Before the stage
writes anything: ad-hoc runs are pointed at their own directory (runs/), the tracking server is
reached (bounded retries, one-line error), each output is locked against a second bridgerl process,
and a watch is set to stop the command when whoever started it dies. Stdout carries only the
command's result (JSON); logs, progress and libraries' chatter go to stderr.
Exit codes: 0 done, 1 refused (promotion gate, demos generation), 2 bad input or configuration
(one line naming the file/line/key), 3 tracking server or registry unavailable.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-P", "--params", default="params.yaml", help="configuration file (default: params.yaml)")
    p.add_argument("--preset", default=None, help="a preset name (src/bridgerl/presets) or YAML path layered on params")
    p.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a parameter, e.g. -S train.bridge.lam=0.3 (repeatable)")
    p.add_argument("--debug", action="store_true",
                   help="on an environment failure (disk full, I/O error, permission), the full traceback")


def build_parser() -> argparse.ArgumentParser:
    from bridgerl.core.stage_table import STAGES

    ap = argparse.ArgumentParser(prog="bridgerl", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)

    def cmd(name, help_):
        p = sub.add_parser(name, help=help_)
        _common(p)
        if name in STAGES:
            p.add_argument("--io", action="append", default=[], metavar="NAME=PATH",
                           help="put an input/output at PATH by its artifact name in the stage table "
                                f"({', '.join(x.artifact for x in STAGES[name].io)}); applied after -S")
        return p

    cmd("config", "print the resolved, validated configuration")
    p = cmd("plan", "per-GPU memory budget of the training configuration (exit 1: it does not fit)")
    p.add_argument("--gpu-memory-gb", type=float, default=80.0,
                   help="memory of one GPU (with --device cpu: of the machine) in GiB (default: 80)")
    p.add_argument("--device", choices=("gpu", "cpu"), default="gpu",
                   help="gpu (default): the per-GPU budget; cpu: the training process's peak on a CPU-only machine")
    p.add_argument("--nproc", type=int, default=None, help="GPUs / processes (default: train.distributed.nproc)")
    p.add_argument("--prompt-tokens", type=int, default=256, help="longest prompt, in tokens (default: 256)")
    p.add_argument("--json", action="store_true", help="the budget as JSON")
    p = cmd("resolve-config", "validate the configuration; write it whole and each stage's slice (first DVC stage)")
    p.add_argument("--out", default=None, help="directory (default: resolved)")
    p.add_argument("--tasks", action="store_true", help="also write each Kubeflow task's configuration")
    p = sub.add_parser("generate", help="write dvc.yaml, docs/stages.md and docs/params.md from the stage table "
                       "and the configuration schema")
    p.add_argument("--check", action="store_true", help="exit 1 naming each file that differs; write nothing")
    p.add_argument("--root", default=".", help="project root (default: .)")
    cmd("prepare", "RL prompts + evaluation sets, deduplicated and split, with a data card")
    cmd("init-model", "build (embedded) or fetch the base model directory")
    cmd("build-demos", "verified SFT demonstrations")
    p = cmd("serve-teacher", "serve a local model on an OpenAI-compatible /v1/chat/completions route")
    p.add_argument("--model", default=None, help="model directory or hub id (default: demos.hf_model, else model.out_dir)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--name", default=None, help="model name clients send (default: demos.endpoint.model)")
    p.add_argument("--api-key-env", default=None, help="require the key held in this environment variable")
    p = cmd("train", "train with train.method (BRIDGE or a baseline)")
    p.add_argument("--max-steps", type=int, default=None,
                   help="stop after N iterations (a smoke run: in its own runs/ directory unless --resume)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint of this run")
    p.add_argument("--run", default=None, metavar="NAME",
                   help="an ad-hoc run: model, checkpoints, metrics and curve in runs/NAME/, the pipeline's "
                        "outputs untouched (default with --max-steps: runs/train-<time>)")
    p.add_argument("--nproc", type=int, default=None, help="spawn torchrun with N processes on this node")
    p = cmd("evaluate", "evaluate a model on eval.benchmarks, or score saved predictions")
    p.add_argument("--model", default=None, help="model directory (default: train.out_dir)")
    p.add_argument("--repair", action="store_true",
                   help="register nothing: remove what killed or racing registrations left (duplicate or abandoned "
                        "versions, runs left RUNNING, logged models no version uses)")
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
    p = cmd("report", "markdown table + bar chart of eval metrics across models/methods")
    p.add_argument("--metrics", action="append", required=True, metavar="NAME=PATH",
                   help="a row: its name and an eval metrics JSON (repeatable)")
    p.add_argument("--out", required=True, help="directory for report.md / report.png / report.json")
    p = cmd("register", "log and register the trained model in MLflow (alias challenger)")
    p.add_argument("--model", default=None, help="model directory (default: train.out_dir)")
    p.add_argument("--repair", action="store_true",
                   help="register nothing: remove what killed or racing registrations left (duplicate or abandoned "
                        "versions, runs left RUNNING, logged models no version uses)")
    p = cmd("promote", "move alias champion to a version if it beats the current champion")
    p.add_argument("--version", default=None, help="version to promote (default: the challenger)")
    p.add_argument("--force", action="store_true", help="promote even if the gate refuses (recorded in the history)")
    cmd("rollback", "move alias champion back to the previous champion")
    p = cmd("compare", "train every method on the same data/budget/seeds, evaluate, write a report")
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
    return ap


# commands whose stage logs to MLflow: the tracking server must answer before they start
TRACKED = {"prepare", "init-model", "build-demos", "train", "evaluate", "register", "promote", "rollback", "compare"}
RUNS_DIR = Path("runs")  # ad-hoc runs (train --max-steps/--run, compare, evaluate --predictions); git-ignored
_results = sys.stdout


def _emit(obj) -> None:
    """The command's result on stdout (JSON or one line), nothing else there."""
    text = obj if isinstance(obj, str) else json.dumps(obj)
    _results.write(text + "\n")
    _results.flush()


@contextlib.contextmanager
def _stdout_for_results():
    """Point file descriptor 1 at stderr for everything (libraries' print()s and loggers bound to
    sys.stdout, native code, subprocesses) and keep a private handle on the real stdout for `_emit`."""
    global _results
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    _results = os.fdopen(os.dup(saved), "w")
    try:
        yield
    finally:
        sys.stdout.flush()
        _results.close()
        _results = sys.stdout
        os.dup2(saved, 1)
        os.close(saved)


def _exit_on_sigterm(command: str) -> None:
    """SIGTERM (a Kubernetes pod stop, `kill`, the parent's death) unwinds like Ctrl-C, so temporary
    outputs are removed and locks released."""
    import signal

    from bridgerl.core import parent_watch

    ppid = os.getppid()

    def handler(signum, frame):
        if os.getppid() != ppid and not parent_watch.why():
            print(f"bridgerl {command}: its parent process (pid {ppid}) exited; stopping", file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def _stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def _place_outputs(args, argv: list[str], cfg):
    """Ad-hoc commands write to their own directory, never over the pipeline's (DVC's) outputs:
    `train --max-steps` (not resuming) or `--run NAME` -> runs/NAME/; `compare` -> runs/compare-<time>/
    unless --out; `evaluate --predictions` -> runs/predictions/ unless --out. Returns (cfg, argv)."""
    c = args.command
    if c == "train" and (args.run or (args.max_steps is not None and not args.resume)):
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
    elif c == "compare" and args.out is None:
        args.out = "docs/results" if args.report_only else str(RUNS_DIR / f"compare-{_stamp()}")
    elif c == "evaluate" and args.predictions and args.out is None:
        from bridgerl.stages.evaluate import PREDICTIONS_OUT

        args.out = PREDICTIONS_OUT
    return cfg, argv


def _outputs(args, cfg) -> list[str]:
    """What the command writes (each is locked against a second bridgerl process)."""
    c = args.command
    if c == "prepare":
        return [cfg.data.out_dir]
    if c == "init-model":
        return [cfg.model.out_dir]
    if c == "build-demos":
        return [cfg.demos.out_dir]
    if c == "train":
        return [cfg.train.out_dir, cfg.train.checkpoint_dir]
    if c == "evaluate":
        return [args.out] if args.predictions else [cfg.eval.out_dir, cfg.eval.metrics_file]
    if c == "register":
        return [cfg.registry.out_file]
    if c in ("compare", "report"):
        return [args.out]
    return []


def _check_args(args, cfg) -> None:
    """Arguments that would otherwise fail deep inside a stage."""
    from bridgerl.config import ConfigError
    from bridgerl.core.methods import METHODS
    from bridgerl.core.io import DataError

    c = args.command
    if c == "compare":
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
        from bridgerl.stages.compare import make_arms, parse_sweeps

        if args.jobs < 1:
            raise ConfigError(f"--jobs {args.jobs}: expected 1 or more processes")
        args.sweeps = parse_sweeps(args.sweep)
        make_arms(cfg, args.methods or [], args.sweeps)  # unknown keys and invalid values fail here
        if args.report_only and not (Path(args.out) / "results.json").is_file():
            raise DataError(f"{Path(args.out) / 'results.json'}: not found; --report-only re-renders an earlier "
                            f"`bridgerl compare --out {args.out}`, run that first")
    if c == "train":
        from bridgerl.stages import train_preflight

        train_preflight.check(cfg, resume=args.resume, run=args.run)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if args.command == "generate":
        from bridgerl.codegen import files as generate

        return generate.main(args.root, check=args.check)
    _exit_on_sigterm(args.command)
    from bridgerl.core import parent_watch, quiet

    quiet.install()
    if args.command != "config":
        parent_watch.install(args.command)
    from bridgerl.config import ConfigError, load_config
    from bridgerl.core import locks
    from bridgerl.core.io import DataError, require_writable
    from bridgerl.stages.resolve_config import check_paths
    from bridgerl.tracking import registry

    try:
        overrides = list(args.overrides)
        if getattr(args, "io", None):
            from bridgerl.core.stage_table import STAGES

            try:
                overrides += STAGES[args.command].io_overrides(args.io)
            except KeyError as e:
                raise ConfigError(str(e.args[0])) from None
        cfg = load_config(args.params, overrides, args.preset)
        check_paths(cfg)
        _check_rewards(args.command, cfg)
        cfg, argv = _place_outputs(args, argv, cfg)
        if args.command == "train":  # checkpoints are written from the first steps on (a volume in a pod)
            require_writable(cfg.train.checkpoint_dir, "train.checkpoint_dir")
        _check_args(args, cfg)
        if args.command in TRACKED:
            registry.ensure_reachable(cfg)  # (a local store is created when first used: tracking.init_local_store)
        with locks.hold(_outputs(args, cfg), args.command):
            if args.command == "train":  # --nproc / a Kubeflow pod: re-run this command under torchrun
                from bridgerl.launch import local as launch

                prefix = launch.spawn_command(cfg, args.nproc)
                if prefix is not None:
                    return launch.spawn(prefix, argv)
            with _stdout_for_results():
                return _dispatch(args, cfg)
    except (ConfigError, DataError) as e:
        print(f"bridgerl {args.command}: error: {e}", file=sys.stderr)
        return 2
    except registry.RegistryUnavailable as e:
        print(f"bridgerl {args.command}: error: {e}", file=sys.stderr)
        return 3
    except OSError as e:  # the machine, not the input: disk full, quota, I/O error, read-only volume, permission
        if getattr(args, "debug", False):
            raise
        print(f"bridgerl {args.command}: error: {environment_failure(e)} (an environment failure; the previous "
              f"outputs are untouched; --debug for the traceback)", file=sys.stderr)
        return 3


def _check_rewards(command: str, cfg) -> None:
    """A stage that scores loads every reward term's function first (rewards.terms.N.function names a bad one)."""
    from bridgerl.core.stage_table import STAGES

    if command in STAGES and "rewards" in STAGES[command].params:
        from bridgerl.rewards.terms import Scorer

        Scorer.judging(cfg).close()


def environment_failure(e: OSError) -> str:
    """One line for an OSError: the path(s) and the cause."""
    what = e.strerror or str(e) or type(e).__name__
    paths = [str(x) for x in (e.filename, e.filename2) if x]
    return f"{' -> '.join(paths)}: {what}" if paths else what


# commands that compute with torch: each sizes its threads to its share of the cores (bridgerl.core.threads)
COMPUTE = {"init-model", "build-demos", "train", "evaluate", "compare", "serve-teacher"}


def _dispatch(args, cfg) -> int:
    from bridgerl.config import ConfigError

    c = args.command
    if c in COMPUTE:
        from bridgerl.core import threads

        threads.configure(cfg.threads)
    if c == "config":
        import yaml

        _emit(yaml.safe_dump(cfg.loggable(), sort_keys=False))  # secrets redacted
        return 0
    if c == "plan":
        from bridgerl.train import plan

        text, fits = plan.main(cfg, args.gpu_memory_gb, args.nproc, args.json, args.prompt_tokens, args.device)
        _emit(text)
        return 0 if fits else 1
    if c == "resolve-config":
        from bridgerl.stages import resolve_config

        _emit(resolve_config.run(cfg, args.out or resolve_config.RESOLVED_DIR, tasks=args.tasks))
        return 0
    if c == "prepare":
        from bridgerl.stages import prepare

        card = prepare.run(cfg)
        _emit(card["rl"]["steps"])
    elif c == "init-model":
        from bridgerl.stages import init_model

        _emit(init_model.run(cfg))
    elif c == "build-demos":
        from bridgerl.stages import build_demos

        try:
            _emit(build_demos.run(cfg)["counts"])
        except build_demos.GenerationFailed as e:
            print(f"bridgerl build-demos: error: {e}", file=sys.stderr)
            return 1
    elif c == "serve-teacher":
        from bridgerl.config import ConfigError
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
    elif c == "train":
        from bridgerl.stages import train
        from bridgerl.train.parallel import detect

        final = train.run(cfg, max_steps=args.max_steps, resume=args.resume)
        if detect().is_main:
            _emit(final)
    elif c == "evaluate":
        from bridgerl.stages import evaluate

        if args.predictions:
            if not args.benchmark:
                raise ConfigError("evaluate --predictions needs --benchmark NAME")
            summary = evaluate.score_predictions(cfg, args.predictions, args.benchmark, args.data, args.merge,
                                                 out=args.out)
            m = summary["benchmarks"][args.benchmark]
            _emit({"benchmark": args.benchmark, "accuracy": m["accuracy"], "n": m["n"], "missing": m["missing"],
                   "out": summary["out"]})
        else:
            if args.benchmark or args.data or args.merge or args.out:
                raise ConfigError("--benchmark/--data/--merge/--out go with --predictions; "
                                  "to evaluate a model on other benchmarks use -S eval.benchmarks=[...]")
            _emit(evaluate.run(cfg, model_dir=args.model)["avg_accuracy"])
    elif c == "report":
        from pathlib import Path

        from bridgerl.evaluation.report import parse_named, report_from_files

        paths = report_from_files(parse_named(args.metrics), Path(args.out))
        _emit({k: str(v) for k, v in paths.items()})
    elif c in ("register", "promote", "rollback"):
        return _registry_command(args, cfg)
    elif c == "compare":
        from bridgerl.stages import compare

        if args.report_only:
            compare.rerender(cfg, args.out)
        else:
            compare.run(cfg, methods=args.methods or None, seeds=args.seeds or None, out=args.out,
                        sweeps=args.sweeps, jobs=args.jobs)
        _emit(f"report: {args.out}/report.md")
    else:
        raise NotImplementedError(c)
    return 0


def _registry_command(args, cfg) -> int:
    """register / promote / rollback: exit 1 when the promotion gate refuses, 3 on a registry error."""
    from bridgerl.tracking import registry

    c = args.command
    try:
        if c == "register":
            from bridgerl.stages import register

            out = register.repair(cfg) if args.repair else register.run(cfg, model_dir=args.model)
        elif c == "promote":
            out = registry.promote(cfg, version=args.version, force=args.force)
        else:
            out = registry.rollback(cfg)
    except registry.PromotionRefused as e:
        _emit(e.details)
        print(f"bridgerl promote: refused: {e}", file=sys.stderr)
        return 1
    except registry.RegistryError as e:
        print(f"bridgerl {c}: error: {e}", file=sys.stderr)
        return 3
    _emit(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
