"""`bridgerl resolve-config` as a Kubeflow component: params YAML + run parameters → one configuration per task.

The first task: it validates the configuration (a typo fails here, before any work) and hands each
later task only the configuration its stage reads (bridgerl.core.stage_table), so a task's cache key
changes only when something it reads changes: a second run that changes only training settings
reuses prepare, init-model and build-demos.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Markdown, Output

from components.common import CPU_IMAGE, run_parameter_overrides


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False, additional_funcs=[run_parameter_overrides])
def resolve_config(params: str, overrides: list, resolved: Output[Markdown], method: str = "", preset: str = "",
                   base_model: str = "", lr_theta: float = -1, lr_w: float = -1, lam: float = -1, steps: int = -1,
                   epochs: int = -1, seed: int = -1, benchmarks: list = []
                   ) -> NamedTuple("Configs", prepare=str, init_model=str, build_demos=str, train=str, evaluate=str,
                                   register=str):
    """params ← typed run parameters (unset, empty or -1: params decides) ← `overrides`; `resolved`
    shows the result."""
    import json
    import os
    import subprocess
    import sys
    import tempfile
    from collections import namedtuple

    work = tempfile.mkdtemp(prefix="bridgerl-resolve-")
    with open(os.path.join(work, "params.yaml"), "w") as f:
        f.write(params)
    sets = run_parameter_overrides(method=method, preset=preset, base_model=base_model, lr_theta=lr_theta,
                                   lr_w=lr_w, lam=lam, steps=steps, epochs=epochs, seed=seed,
                                   benchmarks=benchmarks) + [str(o) for o in overrides]
    out = os.path.join(work, "resolved")
    cmd = [sys.executable, "-m", "bridgerl", "resolve-config", "-P", os.path.join(work, "params.yaml"),
           "--out", out, "--tasks"]
    for s in sets:
        cmd += ["-S", s]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    with open(os.path.join(out, "config.json")) as f:
        full = json.load(f)
    with open(resolved.path, "w") as f:
        f.write("# Resolved configuration\n\nSettings applied over params_yaml: "
                + (", ".join(f"`{s}`" for s in sets) or "none") + "\n\n```json\n"
                + json.dumps(full, indent=2, sort_keys=True) + "\n```\n")

    def task(stage: str) -> str:
        with open(os.path.join(out, f"{stage}.task.json")) as f:
            return json.dumps(json.load(f), sort_keys=True)

    names = ["prepare", "init_model", "build_demos", "train", "evaluate", "register"]
    return namedtuple("Configs", names)(*(task(n.replace("_", "-")) for n in names))
