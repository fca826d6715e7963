"""`bridgerl <stage>`: the one entry point both orchestrators (DVC and Kubeflow) call.

Every command reads params.yaml (or --params), an optional --preset, and `-S key=value` overrides,
validates them into one Config before any work starts, then runs its stage module. Before the stage
writes anything: ad-hoc runs are pointed at their own directory (runs/), the tracking server is
reached (bounded retries, one-line error), each output is locked against a second bridgerl process,
and a watch is set to stop the command when whoever started it dies. Stdout carries only the
command's result (JSON); logs, progress and libraries' chatter go to stderr.
Exit codes: 0 done, 1 refused (promotion gate, demos generation), 2 bad input or configuration
(one line naming the file/line/key), 3 tracking server or registry unavailable.

What each command is (arguments, outputs, tracking, compute, what it runs) is its record in
`bridgerl.cli.commands.COMMANDS`; this module runs any of them the same way.
"""

from __future__ import annotations

import argparse
import os
import sys

from bridgerl.cli.commands import COMMANDS, Command
from bridgerl.cli.output import stdout_for_results

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
    ap = argparse.ArgumentParser(prog="bridgerl", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    for c in COMMANDS.values():
        p = sub.add_parser(c.name, help=c.help)
        if c.configured:
            _common(p)
        if c.stage is not None:
            p.add_argument("--io", action="append", default=[], metavar="NAME=PATH",
                           help="put an input/output at PATH by its artifact name in the stage table "
                                f"({', '.join(x.artifact for x in c.stage.io)}); applied after -S")
        c.arguments(p)
    return ap


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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    command = COMMANDS[args.command]
    if not command.configured:
        return command.run(args, None) or 0
    _exit_on_sigterm(args.command)
    from bridgerl.core import locks, parent_watch, quiet

    quiet.install()
    if args.command != "config":
        parent_watch.install(args.command)
    from bridgerl.config import ConfigError, load_config
    from bridgerl.core.io import DataError
    from bridgerl.stages.resolve_config import check_paths
    from bridgerl.tracking import client

    try:
        overrides = list(args.overrides)
        if command.stage is not None and args.io:
            try:
                overrides += command.stage.io_overrides(args.io)
            except KeyError as e:
                raise ConfigError(str(e.args[0])) from None
        cfg = load_config(args.params, overrides, args.preset)
        check_paths(cfg)
        _check_rewards(command, cfg)
        cfg, argv = command.place(args, argv, cfg)
        command.check(args, cfg)
        if command.tracked:
            client.ensure_reachable(cfg)  # (a local store is created when first used: runs.init_local_store)
        with locks.hold(command.writes(args, cfg), args.command):
            if args.command == "train":  # --nproc / a Kubeflow pod: re-run this command under torchrun
                from bridgerl.launch import local

                prefix = local.spawn_command(cfg, args.nproc)
                if prefix is not None:
                    return local.spawn(prefix, argv)
            with stdout_for_results():
                return _run(command, args, cfg)
    except (ConfigError, DataError) as e:
        print(f"bridgerl {args.command}: error: {e}", file=sys.stderr)
        return 2
    except client.RegistryUnavailable as e:
        print(f"bridgerl {args.command}: error: {e}", file=sys.stderr)
        return 3
    except OSError as e:  # the machine, not the input: disk full, quota, I/O error, read-only volume, permission
        if getattr(args, "debug", False):
            raise
        print(f"bridgerl {args.command}: error: {environment_failure(e)} (an environment failure; the previous "
              f"outputs are untouched; --debug for the traceback)", file=sys.stderr)
        return 3


def _run(command: Command, args, cfg) -> int:
    if command.compute:
        from bridgerl.core import threads

        threads.configure(cfg.threads)
    return command.run(args, cfg) or 0


def _check_rewards(command: Command, cfg) -> None:
    """A stage that scores loads every reward term's function first (rewards.terms.N.function names a bad one)."""
    if command.stage is not None and "rewards" in command.stage.params:
        from bridgerl.rewards.terms import Scorer

        Scorer.judging(cfg).close()


def environment_failure(e: OSError) -> str:
    """One line for an OSError: the path(s) and the cause."""
    what = e.strerror or str(e) or type(e).__name__
    paths = [str(x) for x in (e.filename, e.filename2) if x]
    return f"{' -> '.join(paths)}: {what}" if paths else what
