"""docs/gpu.md from the GPU benchmark's results.json (bench.py), or the page saying it has not run yet.

    python benchmarks/gpu/render.py RESULTS.json docs/gpu.md     # a run's figures
    python benchmarks/gpu/render.py --not-run docs/gpu.md        # no GPU run yet: how to run it

Every figure is labelled measured (timed or read from the allocator in that run), predicted
(`bridgerl plan`) or computed (from the model's shape and the datasheet ceilings).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

FETCH = "bash benchmarks/gpu/fetch_wheels.sh"
RUN_CALL = ('run(carry=[".whl"], timeout_s=450, command="bash benchmarks/gpu/run.sh --out $OUT --budget-s 360 '
            '2>&1 | tee $OUT/run.log")')
RERUN_CALL = ('run(carry=[".whl"], timeout_s=330, command="bash benchmarks/gpu/run.sh --out $OUT --budget-s 240 '
              '--skip-exactness --sizes 3b 2>&1 | tee $OUT/run.log")')
HOW = f"""## How to run it (a session whose task is lent a GPU)

1. Here, in the repo root of the session's own checkout (the device tool sends that checkout): `{FETCH}`
   downloads the pinned wheels of `benchmarks/gpu/wheels.txt` (pydantic and its parts, about 3 MiB; the GPU
   image lacks them) into `.whl/` (git-ignored).
2. One device call: `{RUN_CALL}`.
   The script measures for at most `--budget-s` seconds (a size or iteration that would not fit is skipped and
   listed), writes `$OUT/results.json` after each section and `$OUT/gpu.md` at the end; 450 s leaves room in
   the 15 device minutes for one rerun, e.g. of one size alone (`--sizes 3b` or `--sizes 0.5b`): `{RERUN_CALL}`.
3. `python benchmarks/gpu/render.py <files_at>/results.json docs/gpu.md`, then the README's "Paper scale"
   section gets the headline figures. Anything the run shows wrong (a dtype, a device placement, memory off
   by more than 25% from the plan) is fixed in the product.

`bash benchmarks/gpu/run.sh --tiny --out DIR` runs the same path on the CPU with tiny shapes (about a minute;
tests/test_gpu_bench.py runs it), hiding the packages the GPU image lacks.
"""


def _f(x, fmt="{:.3g}", none="n/a"):
    return none if x is None else fmt.format(x)


def _gib(x):
    return _f(x, "{:.2f}")


def _median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else None


def _ratio(x):
    return _f(x, "{:.2f}x")


def not_run() -> str:
    return ("# GPU numbers\n\n**Not yet run on a GPU.** No task so far was lent a GPU machine; the script below is "
            "prepared and tested on the CPU (`--tiny`), and this page is replaced by its results the first time "
            "one is.\n\nWhat it measures: (1) exactness on CUDA: every method's update rule (fp32) against the same "
            "step on the CPU in float64, and chunked log-probs against full logits in bf16; (2) the product's Trainer "
            "at Qwen2.5-0.5B and Qwen2.5-3B shape (random weights, vocabulary 151,936, bf16, gradient checkpointing, "
            "chunked log-probs, token-bounded micro-batches, the HF generation copy), one GPU, `rl_zero` and `bridge` "
            "interleaved, 16 prompts x 5 rollouts x 1,024 new tokens (EOS ignored): per-iteration time split into "
            "rollout / old and reference log-probs / update, the BRIDGE/RL-zero ratio, peak GPU memory against "
            "`bridgerl plan`, decode tokens/s against the HBM bound and the update's MFU.\n\n" + HOW)


def _exactness(ex: dict) -> list[str]:
    ur, ch = ex["update_rules"], ex["chunked_logprobs"]
    lines = ["## Exactness", "",
             f"Every method's update rule on the device in {ur['device_dtype']} against the same step on the CPU in "
             f"float64 ({ur['switches']}; small random Qwen2 model): relative L2 error of each parameter group's "
             f"gradient at each optimizer step, tolerance {ur['tolerance']['relative_l2']:g}.", "",
             "| method | rule | optimizer steps | max relative L2 error | pass |", "| --- | --- | --- | --- | --- |"]
    for name, m in ur["methods"].items():
        lines.append(f"| {name} | {m['rule']} | {m['steps']} | {m['max_relative_l2']:.2e} | {'yes' if m['pass'] else 'NO'} |")
    tol = ch["tolerance"]
    lines += ["", f"Chunked log-probs ({ch['chunk_tokens']}-position chunks) against full logits, both {ch['dtype']}, "
              f"vocabulary {ch['vocab']:,}, {ch['response_tokens']} response tokens: max |Δ log p| "
              f"{ch['max_abs_chunked_vs_full']:.2e} (mean {ch['mean_abs_chunked_vs_full']:.2e}; tolerance "
              f"{tol['max_abs_chunked_vs_full']:g}), entropy max |Δ| {ch['max_abs_entropy_chunked_vs_full']:.2e}, "
              f"gradient cosine {ch['grad_cosine_chunked_vs_full']:.6f} (tolerance ≥ {tol['grad_cosine_chunked_vs_full']:g}); "
              f"against an fp32 copy: chunked {ch['max_abs_chunked_vs_fp32']:.2e}, full {ch['max_abs_full_vs_fp32']:.2e}. "
              f"Pass: {'yes' if ch['pass'] else 'NO'}.", ""]
    return lines


def _scale(label: str, sc: dict, settings: dict, datasheet: dict) -> list[str]:
    s = settings
    rz, br = sc["methods"]["rl_zero"], sc["methods"]["bridge"]
    n_it = f"{len(rz['iterations'])} + {len(br['iterations'])}"
    head = [f"## Trainer at {sc['shape_of']} shape ({sc['parameters'] / 1e9:.2f}B parameters, random weights)", "",
            f"One device, {sc['dtype']}; {s['prompts']} prompts x {s['group']} rollouts x {s['new_tokens']:,} new "
            f"tokens (EOS ignored; prompts {sc['prompt_len']} tokens), {s['prompts']} demonstrations of "
            f"{sc['demo_len'] - sc['prompt_len'] - 1:,} tokens (+ EOS); gradient checkpointing, chunked log-probs "
            f"({s['logprob_chunk_tokens']}), "
            f"micro-batches of {s['micro_batch_tokens']:,} tokens, HF generation copy, AdamW; the qwen2.5-3b preset "
            f"otherwise. Iterations measured (rl_zero + bridge, interleaved A B B A after one short warm-up each): "
            f"{n_it}; medians. Setup (model, trainers, warm-ups) took {sc['setup_s']:.0f} s.", "",
            "| | rl_zero | bridge | bridge / rl_zero | kind |", "| --- | --- | --- | --- | --- |"]
    ratio = sc["bridge_over_rl_zero"]
    rows = [("rollout (generation copy: sync + decode), s", "rollout_s", "measured"),
            ("old/ref log-probs, s", "logprobs_s", "measured"),
            ("update, s", "update_s", "measured"),
            ("iteration, s", "step_s", "measured")]
    for title, k, kind in rows:
        head.append(f"| {title} | {_f(rz['median'][k])} | {_f(br['median'][k])} | {_ratio(ratio.get(k))} | {kind} |")

    def both(fn, fmt=_f):
        return f"{fmt(fn(rz))} | {fmt(fn(br))}"

    pct = lambda x: _f(None if x is None else 100 * x, "{:.1f}%")  # noqa: E731
    head += [f"| decode tokens/s | {both(lambda m: m['decode']['tokens_per_s'], lambda x: _f(x, '{:,.0f}'))} | | measured |",
             f"| HBM bound, tokens/s ({datasheet['hbm_bytes_per_s'] / 1e12:g} TB/s) | "
             f"{both(lambda m: m['decode']['hbm_bound_tokens_per_s'], lambda x: _f(x, '{:,.0f}'))} | | computed |",
             f"| decode, share of the HBM bound | {both(lambda m: m['decode']['fraction_of_hbm_bound'], pct)} | | |",
             f"| update MFU (model FLOPs / {datasheet['bf16_flops_per_s'] / 1e12:g} TFLOP/s) | "
             f"{both(lambda m: m['update']['mfu'], pct)} | | computed from measured time |",
             f"| update HFU (+ checkpointing's recompute) | {both(lambda m: m['update']['hfu'], pct)} | | |",
             f"| θ elements changed per update (one {rz['iterations'][0]['theta_probe']['dtype'] if rz['iterations'] else ''} "
             f"weight matrix, lr {_f(rz['iterations'][0]['theta_probe']['lr'] if rz['iterations'] else None, '{:g}')}) | "
             f"{both(lambda m: _median(i['theta_changed_fraction'] for i in m['iterations']), pct)} | | measured |",
             f"| peak memory, update phase, GiB | {both(lambda m: m['median']['update_phase_peak_own_gib'], _gib)} | "
             f"{_ratio(ratio.get('update_phase_peak_own_gib'))} | measured (max_memory_allocated) |",
             f"| `bridgerl plan`, training phase less its {rz['plan']['reserve_gb']:g} GiB reserve, GiB | "
             f"{both(lambda m: m['plan']['training_phase_excl_reserve_gb'], _gib)} | | predicted |",
             f"| measured / plan, update phase | {both(lambda m: m['measured_vs_plan']['update_phase'], _ratio)} | | |",
             "| peak memory, rollout phase (generation + old/ref log-probs), GiB | "
             f"{both(lambda m: m['median']['rollout_phase_peak_own_gib'], _gib)} | "
             f"| measured |",
             f"| `bridgerl plan`, rollout phase less reserve, GiB | "
             f"{both(lambda m: m['plan']['rollout_phase_excl_reserve_gb'], _gib)} | | predicted |",
             f"| measured / plan, rollout phase | {both(lambda m: m['measured_vs_plan']['rollout_phase'], _ratio)} | | |",
             ""]
    head.append("Memory is each trainer's own: the process-wide peak less what the other trainer holds at rest "
                f"(rl_zero {_gib(sc['resident_at_rest_gib']['rl_zero'])} GiB, bridge "
                f"{_gib(sc['resident_at_rest_gib']['bridge'])} GiB at rest). The bound reads every weight and the "
                "mean KV cache once per decode step; MFU counts forward + backward (6 FLOPs per weight and token, "
                "attention and the output layer at response positions), not the recomputation.")
    if sc["skipped"]:
        head += ["", "Skipped (budget): " + "; ".join(sc["skipped"]) + "."]
    return head + [""]


def render(res: dict) -> str:
    env = res["sections"].get("env", {})
    out = ["# GPU numbers", ""]
    if res["tiny"]:
        out += ["**A tiny CPU smoke run (`--tiny`), not GPU numbers**: the figures only show that the path runs.", ""]
    else:
        out += [f"Measured on {env.get('device_name')} ({_f(env.get('device_memory_gib'), '{:.0f}')} GiB), torch "
                f"{env.get('torch')} (CUDA {env.get('cuda')}), transformers {env.get('transformers')}, peft "
                f"{env.get('peft')}, commit {env.get('commit')}, {env.get('utc')}; "
                f"{_f(res.get('total_s'), '{:.0f}')} s in all, TF32 matmul {'on' if env.get('tf32_matmul') else 'off'}.",
                ""]
    ds, ce = res["datasheet"], res["sections"].get("ceilings")
    out += ["## Ceilings", "", "| | used for the ratios | measured in this run |", "| --- | --- | --- |",
            f"| memory bandwidth | {ds['hbm_bytes_per_s'] / 1e12:g} TB/s ({ds['device']}) | "
            f"{_f(ce and ce['copy_bytes_per_s'] / 1e12, '{:.2f}')} TB/s (copy of {_f(ce and ce['copy_gib'], '{:g}')} GiB, "
            "bytes read + written) |",
            f"| dense bf16 | {ds['bf16_flops_per_s'] / 1e12:g} TFLOP/s | "
            f"{_f(ce and ce['bf16_matmul_flops_per_s'] / 1e12, '{:.0f}')} TFLOP/s ({_f(ce and ce['matmul_n'], '{}')}³ "
            "matrix product) |", ""]
    if "exactness" in res["sections"]:
        out += _exactness(res["sections"]["exactness"])
    for name, sc in res["sections"].items():
        if name.startswith("scale_"):
            out += _scale(name[6:], sc, res["settings"], ds)
    if res.get("skipped"):
        out += ["Sizes skipped (budget): " + "; ".join(res["skipped"]) + ".", ""]
    for name, err in res.get("errors", {}).items():
        out += [f"**{name} failed**: `{err.splitlines()[0]}`", ""]
    return "\n".join(out) + "\n" + HOW


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+", metavar="RESULTS.json OUT.md | OUT.md (with --not-run)")
    ap.add_argument("--not-run", action="store_true", help="the page for 'not yet run on a GPU'")
    a = ap.parse_args(argv)
    if len(a.paths) != (1 if a.not_run else 2):
        ap.error("give RESULTS.json OUT.md, or --not-run OUT.md")
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
    from bridgerl.core.io import read_json

    text = not_run() if a.not_run else render(read_json(a.paths[0]))
    out = Path(a.paths[-1])
    tmp = out.with_name(out.name + ".tmp-render")
    tmp.write_text(text)
    tmp.replace(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
