"""GPU numbers in one run (issue 25): exactness on the device, then the Trainer at Qwen2.5-0.5B and -3B shape.

    bash benchmarks/gpu/run.sh [--out DIR] [--budget-s 360] [--sizes 3b,0.5b] [--rounds 1]
    bash benchmarks/gpu/run.sh --tiny      # the same path on the CPU with tiny shapes (the test runs this)

Sections, each written to DIR/results.json as soon as it is done (written whole, then renamed), so a run
stopped at its limit still returns what it measured:
1. env: versions, the device, its memory, whether TF32 is on;
2. ceilings: the datasheet figures the ratios use (H200 SXM: 4.8 TB/s HBM, 989 TFLOP/s dense bf16) and the
   same two measured here (a device-to-device copy, an 8192³ bf16 matrix product);
3. exactness (exactness.py): every method's update rule on the device (fp32) vs the CPU (float64), and
   chunked vs full log-probs in bf16;
4. scale (scale.py): per model shape, rl_zero and bridge interleaved through the product's Trainer.
A section that fails records its error and the run goes on; the exit status is 1 if any failed or an
exactness check missed its tolerance. `--budget-s` bounds the measuring: a size or an iteration that would
not fit in what is left is skipped (and listed as skipped). `--tiny` also hides the packages the GPU
machine lacks (DEVICE_LACKS), so the CPU run shows the path needs none of them.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

# not on the GPU machine's image (docs/gpu.md; /work/.library/device/KINDS.md lists what is); pydantic is carried
DEVICE_LACKS = ("mlflow", "datasets", "deepspeed", "vllm", "math_verify", "trl", "dvc", "kfp")

DATASHEET = {"device": "NVIDIA H200 SXM (vendor datasheet)", "hbm_bytes_per_s": 4.8e12, "bf16_flops_per_s": 989e12}

# the 3B shape first: the paper's model gets its full A B B A; the 0.5B one runs in what is left
FULL = {"sizes": {"3b": "Qwen/Qwen2.5-3B", "0.5b": "Qwen/Qwen2.5-0.5B"},
        "min_budget_s": {"3b": 200, "0.5b": 60},
        "settings": dict(prompts=16, group=5, new_tokens=1024, prompt_tokens=128, demo_tokens=1024,
                         micro_batch_tokens=16384, logprob_chunk_tokens=1024, warm_tokens=16, dtype="auto"),
        "chunked": dict(vocab=151936, rows=4, length=512, chunk=256)}
TINY_SHAPE = dict(model_type="qwen2", vocab_size=2048, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  tie_word_embeddings=True, rope_theta=1e6)
TINY = {"sizes": {"tiny": None}, "min_budget_s": {"tiny": 0},
        "settings": dict(prompts=2, group=2, new_tokens=12, prompt_tokens=6, demo_tokens=10,
                         micro_batch_tokens=24, logprob_chunk_tokens=8, warm_tokens=3, dtype="float32"),
        "chunked": dict(vocab=2048, rows=2, length=48, chunk=16)}


class Budget:
    def __init__(self, seconds: float):
        self.t0, self.seconds = time.perf_counter(), seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.t0)


def hide_packages(names) -> None:
    """Make `import name` fail and importlib.util.find_spec(name) return None, as on a machine without it."""
    for n in names:
        sys.modules[n] = None


def write_results(out_dir: Path, results: dict) -> None:
    from bridgerl.core.io import write_json

    write_json(out_dir / "results.json", results)


def env_info(device) -> dict:
    import importlib.metadata as md

    import torch

    def ver(name):
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            **{k: ver(k) for k in ("transformers", "peft", "pydantic", "pydantic_core", "accelerate", "tokenizers")},
            "device": str(device), "device_name": None, "device_memory_gib": None,
            "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32), "commit": os.environ.get("BRIDGERL_COMMIT"),
            "cpus": os.cpu_count(), "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(device_name=p.name, device_memory_gib=p.total_memory / 2**30)
    return info


def measure_ceilings(device, tiny: bool) -> dict:
    """A device-to-device copy (bytes read + written per second) and a square bf16 matrix product."""
    import torch

    def timed(fn, reps):
        for _ in range(3):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / reps

    n_bytes = (64 if tiny else 4096) * 2**20
    src = torch.empty(n_bytes // 2, dtype=torch.bfloat16, device=device).normal_()
    dst = torch.empty_like(src)
    t_copy = timed(lambda: dst.copy_(src), 10)
    n = 256 if tiny else 8192
    a = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    b = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    t_mm = timed(lambda: a @ b, 10)
    return {"copy_bytes_per_s": 2 * n_bytes / t_copy, "copy_gib": n_bytes / 2**30,
            "bf16_matmul_flops_per_s": 2 * n**3 / t_mm, "matmul_n": n, "reps": 10, "warmups": 3}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="directory for results.json")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU (the test's run)")
    ap.add_argument("--budget-s", type=float, default=360.0, help="seconds of measuring (sizes/iterations that "
                    "would not fit are skipped)")
    ap.add_argument("--sizes", default=None, help="comma-separated subset of the sizes (default: all)")
    ap.add_argument("--rounds", type=int, default=1, help="rounds of A B B A per size")
    ap.add_argument("--skip-exactness", action="store_true")
    a = ap.parse_args(argv)
    budget = Budget(a.budget_s)
    if a.tiny:
        hide_packages(DEVICE_LACKS)
    import torch

    from bridgerl.config import load_config

    mode = TINY if a.tiny else FULL
    device = torch.device("cuda" if torch.cuda.is_available() and not a.tiny else "cpu")
    if not a.tiny and device.type != "cuda":
        print("bench: no CUDA device (use --tiny on a CPU)", file=sys.stderr)
        return 2
    if a.tiny:
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = dict(mode["settings"], rounds=a.rounds)
    results: dict = {"schema": 1, "tiny": a.tiny, "budget_s": a.budget_s, "settings": settings,
                     "hidden_packages": list(DEVICE_LACKS) if a.tiny else [],
                     "datasheet": DATASHEET, "sections": {}, "errors": {}}
    failed = False

    def load_cfg(overrides):
        return load_config(REPO / "params.yaml", overrides, preset="qwen2.5-3b")

    def section(name, fn):
        nonlocal failed
        t0 = time.perf_counter()
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        try:
            results["sections"][name] = fn()
        except Exception as e:  # noqa: BLE001 (a failed section is recorded; the others still run)
            failed = True
            results["errors"][name] = f"{type(e).__name__}: {e}\n{traceback.format_exc()[-3000:]}"
            print(f"bench: {name} FAILED: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        results.setdefault("section_s", {})[name] = time.perf_counter() - t0
        gc.collect()  # what a failed section held (its frames) goes before the next one
        if device.type == "cuda":
            torch.cuda.empty_cache()
        write_results(out_dir, results)

    import exactness
    import scale

    section("env", lambda: env_info(device))
    section("ceilings", lambda: measure_ceilings(device, a.tiny))
    if not a.skip_exactness:
        def exact():
            def tiny_cfg(o):
                return load_config(REPO / "params.yaml", ["tracking.enabled=false", *o])
            res = {"update_rules": exactness.update_rules(tiny_cfg, device),
                   "chunked_logprobs": exactness.chunked_logprobs(device, **mode["chunked"])}
            res["pass"] = res["update_rules"]["pass"] and res["chunked_logprobs"]["pass"]
            return res

        section("exactness", exact)
        ex = results["sections"].get("exactness")
        failed = failed or not (ex and ex["pass"])
    from bridgerl.train.plan import KNOWN_SHAPES

    wanted = a.sizes.split(",") if a.sizes else list(mode["sizes"])
    for label in wanted:
        if label not in mode["sizes"]:
            raise SystemExit(f"--sizes: {label!r} is not one of {', '.join(mode['sizes'])}")
        hub_id = mode["sizes"][label]
        shape = TINY_SHAPE if hub_id is None else KNOWN_SHAPES[hub_id]
        if budget.left() < mode["min_budget_s"][label]:
            results.setdefault("skipped", []).append(f"{label}: {budget.left():.0f} s of budget left, "
                                                     f"needs {mode['min_budget_s'][label]}")
            write_results(out_dir, results)
            continue

        def run(label=label, shape=shape, hub_id=hub_id):
            with tempfile.TemporaryDirectory(prefix=f"bridgerl-gpu-{label}-") as d:
                r = scale.run_size(label, dict(shape), settings, device, Path(d), load_cfg,
                                   results["datasheet"], budget)
            r["shape_of"] = hub_id or "tiny (CPU smoke run)"
            return r

        section(f"scale_{label}", run)
    results["total_s"] = time.perf_counter() - budget.t0
    write_results(out_dir, results)
    print(f"bench: done in {results['total_s']:.0f} s; {out_dir / 'results.json'}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
