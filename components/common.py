"""What every component shares: the images, the one helper that runs `bridgerl <stage>`, and the
typed run parameters' mapping onto configuration keys.

`bridgerl_cli` is copied into each component's source (`additional_funcs`), so a component stays a
self-contained Python function whose body only builds a command line: the stage itself, with all
its logic, is the `bridgerl` package installed in the image. A component never names a configuration
key for its paths: it passes `--io ARTIFACT=PATH` and the stage table maps it.

Images default to the tags `docker/build.sh` produces; set BRIDGERL_CPU_IMAGE / BRIDGERL_GPU_IMAGE
before `python pipelines/compile.py` to compile against your registry.
"""

from __future__ import annotations

import os

VERSION = "0.1.0"
REGISTRY = "ghcr.io/bridgerl"
CPU_IMAGE = os.environ.get("BRIDGERL_CPU_IMAGE", f"{REGISTRY}/bridgerl-cpu:{VERSION}")
GPU_IMAGE = os.environ.get("BRIDGERL_GPU_IMAGE", f"{REGISTRY}/bridgerl-gpu:{VERSION}")


def run_parameter_overrides(method: str = "", preset: str = "", base_model: str = "", lr_theta: float = -1,
                            lr_w: float = -1, lam: float = -1, steps: int = -1, epochs: int = -1,
                            seed: int = -1, benchmarks: list = ()) -> list:
    """The typed run parameters (the knobs set in the Kubeflow UI) as `-S key=value` items; an unset
    one (empty, or a negative number: no key accepts one) leaves params_yaml (and its preset) in
    charge of that key. The one table of which parameter sets which configuration key."""
    import json

    keys = {"preset": preset, "train.method": method, "model.base": base_model, "train.lr_theta": lr_theta,
            "train.lr_w": lr_w, "train.bridge.lam": lam, "train.steps": steps, "train.epochs": epochs,
            "seed": seed, "eval.benchmarks": benchmarks}
    unset = [k for k, v in keys.items()
             if v is None or v == "" or (isinstance(v, (list, tuple)) and not v)
             or (isinstance(v, (int, float)) and not isinstance(v, bool) and v < 0)]
    return [f"{k}={json.dumps(list(v) if isinstance(v, tuple) else v)}" for k, v in keys.items() if k not in unset]


def bridgerl_cli(stage: str, config: str, io: dict, sets: list = (), args: list = (), tracking_uri: str = "",
                 workdir: str = "", launcher: list = ()) -> None:
    """Run `bridgerl <stage> -P <config> -S <set>... --io NAME=PATH... <args>`; raise on failure.

    `config` is the task's configuration (the slice resolve-config made for this stage, JSON); `io`
    maps the stage's artifact names (its contract, bridgerl.core.stage_table) to this task's artifact
    paths. The run id comes from the pod (`KFP_RUN_ID`, set from its `pipeline/runid` label), never
    from an input, so it is not part of the cache key; it groups the run's MLflow runs. Without a pod
    (kfp.local) it is the run folder the task's artifact paths lie in.
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
    config_file = os.path.join(workdir, "config.json")
    with open(config_file, "w") as f:
        f.write(config)
    argv = [stage, "-P", config_file]
    for item in [*([f"tracking.uri={tracking_uri}"] if tracking_uri else []), *sets]:
        argv += ["-S", str(item)]
    for name, path in io.items():
        argv += ["--io", f"{name}={path}"]
    argv += [str(a) for a in args]
    env = dict(os.environ)
    if not env.get("KFP_RUN_ID"):
        # no pod label (kfp.local): the run's folder, KFP's <pipeline_root>/<run>/<task>/<artifact> layout,
        # the folder most of this task's artifact paths share
        runs = [os.path.basename(os.path.dirname(os.path.dirname(os.path.abspath(str(p))))) for p in io.values()]
        runs = [r for r in runs if r]
        if runs:
            env["KFP_RUN_ID"] = max(set(runs), key=runs.count)
    if env.get("KFP_RUN_ID"):  # groups the stage runs of one pipeline run under one MLflow parent run
        env.setdefault("BRIDGERL_PIPELINE_ID", env["KFP_RUN_ID"])
    cmd = [*(launcher or [sys.executable, "-m", "bridgerl"]), *argv]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=env)
