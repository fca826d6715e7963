"""What every component shares: the images it runs in and the one helper that runs `bridgerl <stage>`.

`bridgerl_cli` is copied into each component's source (`additional_funcs`), so a component stays a
self-contained Python function whose body only builds a command line: the stage itself, with all
its logic, is the `bridgerl` package installed in the image.

Images default to the tags `docker/build.sh` produces; set BRIDGERL_CPU_IMAGE / BRIDGERL_GPU_IMAGE
before `python pipelines/compile.py` to compile against your registry.
"""

from __future__ import annotations

import os

VERSION = "0.1.0"
REGISTRY = "ghcr.io/bridgerl"
CPU_IMAGE = os.environ.get("BRIDGERL_CPU_IMAGE", f"{REGISTRY}/bridgerl-cpu:{VERSION}")
GPU_IMAGE = os.environ.get("BRIDGERL_GPU_IMAGE", f"{REGISTRY}/bridgerl-gpu:{VERSION}")


def bridgerl_cli(stage: str, params: str, overrides: list, sets: list, args: list = (), run_id: str = "",
                 tracking_uri: str = "", workdir: str = "", launcher: list = ()) -> None:
    """Run `bridgerl <stage> -P <params> -S <override>... <args>` in this interpreter; raise on failure.

    Order of `-S` items: tracking.uri (if given), the run's `overrides` (pipeline parameters, so they
    can still change it), then `sets`, the component's own artifact paths, which win.
    `launcher` replaces `python -m bridgerl` (multi-node training).
    """
    import os
    import subprocess
    import sys
    import tempfile

    workdir = workdir or tempfile.mkdtemp(prefix=f"bridgerl-{stage}-")
    try:
        os.makedirs(workdir, exist_ok=True)
    except PermissionError:  # e.g. checkpoint_root on a volume the image's user (uid 10001) cannot write
        sys.exit(f"bridgerl {stage}: error: cannot create {workdir}: not writable by uid {os.getuid()} "
                 f"(gid {os.getgid()}); mount a volume writable by that group there (k8s: fsGroup, "
                 "k8s/base/checkpoints-init.yaml; docker: install -d -g 10001 -m 2775 DIR)")
    params_file = os.path.join(workdir, "params.yaml")
    with open(params_file, "w") as f:
        f.write(params)
    argv = [stage, "-P", params_file]
    for item in [*([f"tracking.uri={tracking_uri}"] if tracking_uri else []), *overrides, *sets]:
        argv += ["-S", str(item)]
    argv += [str(a) for a in args]
    env = dict(os.environ)
    if run_id:  # groups the stage runs of one pipeline run under one MLflow parent run
        env.setdefault("BRIDGERL_PIPELINE_ID", run_id)
        env.setdefault("KFP_RUN_ID", run_id)
    cmd = [*(launcher or [sys.executable, "-m", "bridgerl"]), *argv]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=env)
