"""`bridgerl <stage>`: the one entry point both orchestrators (DVC and Kubeflow) call.

Every command reads params.yaml (or --params), an optional --preset, and `-S key=value` overrides,
validates them into one Config before any work starts, then runs its stage module.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-P", "--params", default="params.yaml", help="configuration file (default: params.yaml)")
    p.add_argument("--preset", default=None, help="a preset name (src/bridgerl/presets) or YAML path layered on params")
    p.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a parameter, e.g. -S train.bridge.lam=0.3 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    from bridgerl.stages.contracts import STAGES

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
    p.add_argument("--max-steps", type=int, default=None, help="stop after N iterations (smoke runs)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint of this run")
    p.add_argument("--nproc", type=int, default=None, help="spawn torchrun with N processes on this node")
    p = cmd("evaluate", "evaluate a model on eval.benchmarks, or score saved predictions")
    p.add_argument("--model", default=None, help="model directory (default: train.out_dir)")
    p.add_argument("--predictions", default=None, help="score a JSONL of {id, output} without loading a model")
    p.add_argument("--benchmark", default=None, help="benchmark name for --predictions")
    p.add_argument("--data", default=None,
                   help="benchmark file (id, problem, answer) for --predictions (default: the prepared copy, "
                        "else the configured source)")
    p.add_argument("--merge", action="store_true",
                   help="with --predictions: add the benchmark to the existing eval.metrics_file")
    p = cmd("report", "markdown table + bar chart of eval metrics across models/methods")
    p.add_argument("--metrics", action="append", required=True, metavar="NAME=PATH",
                   help="a row: its name and an eval metrics JSON (repeatable)")
    p.add_argument("--out", required=True, help="directory for report.md / report.png / report.json")
    p = cmd("register", "log and register the trained model in MLflow (alias challenger)")
    p.add_argument("--model", default=None, help="model directory (default: train.out_dir)")
    p = cmd("promote", "move alias champion to a version if it beats the current champion")
    p.add_argument("--version", default=None, help="version to promote (default: the challenger)")
    p.add_argument("--force", action="store_true", help="promote even if the gate refuses (recorded in the history)")
    cmd("rollback", "move alias champion back to the previous champion")
    p = cmd("compare", "train every method on the same data/budget/seeds, evaluate, write a report")
    p.add_argument("--methods", default=None, help="comma-separated subset of methods")
    p.add_argument("--seeds", default=None, help="comma-separated seeds")
    p.add_argument("--out", default="docs/results", help="report directory")
    p.add_argument("--report-only", action="store_true", help="re-render the report from OUT/results.json")
    return ap


def _exit_on_sigterm() -> None:
    """SIGTERM (a Kubernetes pod stop, `kill`) unwinds like Ctrl-C, so temporary outputs are removed."""
    import signal

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    _exit_on_sigterm()
    if args.command == "generate":
        from bridgerl import generate

        return generate.main(args.root, check=args.check)
    from bridgerl.config import ConfigError, check_paths, load_config
    from bridgerl.io import DataError

    try:
        overrides = list(args.overrides)
        if getattr(args, "io", None):
            from bridgerl.stages.contracts import STAGES, io_overrides

            try:
                overrides += io_overrides(STAGES[args.command], args.io)
            except KeyError as e:
                raise ConfigError(str(e.args[0])) from None
        cfg = load_config(args.params, overrides, args.preset)
        check_paths(cfg)
        if args.command == "train":  # --nproc / a Kubeflow pod: re-run this command under torchrun
            from bridgerl.train import distributed

            prefix = distributed.spawn_command(cfg, args.nproc)
            if prefix is not None:
                return distributed.spawn(prefix, argv)
        return _dispatch(args, cfg)
    except (ConfigError, DataError) as e:
        print(f"bridgerl {args.command}: error: {e}", file=sys.stderr)
        return 2


def _dispatch(args, cfg) -> int:
    from bridgerl.config import ConfigError

    c = args.command
    if c == "config":
        import yaml

        print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        return 0
    if c == "resolve-config":
        from bridgerl.stages import resolve_config

        print(json.dumps(resolve_config.run(cfg, args.out or resolve_config.RESOLVED_DIR, tasks=args.tasks)))
        return 0
    if c == "prepare":
        from bridgerl.stages import prepare

        card = prepare.run(cfg)
        print(json.dumps(card["rl"]["steps"]))
    elif c == "init-model":
        from bridgerl.stages import init_model

        print(json.dumps(init_model.run(cfg)))
    elif c == "build-demos":
        from bridgerl.stages import build_demos

        try:
            print(json.dumps(build_demos.run(cfg)["counts"]))
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
        from bridgerl.train.distributed import detect

        final = train.run(cfg, max_steps=args.max_steps, resume=args.resume)
        if detect().is_main:
            print(json.dumps(final))
    elif c == "evaluate":
        from bridgerl.stages import evaluate

        if args.predictions:
            if not args.benchmark:
                raise ConfigError("evaluate --predictions needs --benchmark NAME")
            summary = evaluate.score_predictions(cfg, args.predictions, args.benchmark, args.data, args.merge)
            m = summary["benchmarks"][args.benchmark]
            print(json.dumps({"benchmark": args.benchmark, "accuracy": m["accuracy"], "n": m["n"],
                              "missing": m["missing"]}))
        else:
            if args.benchmark or args.data or args.merge:
                raise ConfigError("--benchmark/--data/--merge go with --predictions; "
                                  "to evaluate a model on other benchmarks use -S eval.benchmarks=[...]")
            print(json.dumps(evaluate.run(cfg, model_dir=args.model)["avg_accuracy"]))
    elif c == "report":
        from pathlib import Path

        from bridgerl.evaluation.report import parse_named, report_from_files

        paths = report_from_files(parse_named(args.metrics), Path(args.out))
        print(json.dumps({k: str(v) for k, v in paths.items()}))
    elif c in ("register", "promote", "rollback"):
        return _registry_command(args, cfg)
    elif c == "compare":
        from bridgerl.stages import compare

        methods = args.methods.split(",") if args.methods else None
        seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else None
        if args.report_only:
            compare.rerender(cfg, args.out)
        else:
            compare.run(cfg, methods=methods, seeds=seeds, out=args.out)
        print(f"report: {args.out}/report.md")
    else:
        raise NotImplementedError(c)
    return 0


def _registry_command(args, cfg) -> int:
    """register / promote / rollback: exit 1 when the promotion gate refuses, 3 on a registry error."""
    from bridgerl import registry

    c = args.command
    try:
        if c == "register":
            from bridgerl.stages import register

            out = register.run(cfg, model_dir=args.model)
        elif c == "promote":
            out = registry.promote(cfg, version=args.version, force=args.force)
        else:
            out = registry.rollback(cfg)
    except registry.PromotionRefused as e:
        print(json.dumps(e.details))
        print(f"bridgerl promote: refused: {e}", file=sys.stderr)
        return 1
    except registry.RegistryError as e:
        print(f"bridgerl {c}: error: {e}", file=sys.stderr)
        return 3
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
