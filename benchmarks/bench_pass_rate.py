"""Pass rate of a model on RL problems at a prompt and temperature (a benchmark, not a test): how a preset's
prompt, temperature and group size were chosen (docs/real-model.md).

Each problem is asked through the model's chat template with TEMPLATE, n samples at TEMPERATURE (vLLM,
seeded per problem) and once greedy; each output is scored by the problem's verifier
(bridgerl.rewards.judge). Printed: per problem the samples right and the greedy verdict, then the share
of samples right, the problems with any right, the share truncated at the token budget, tokens per sample.

    python benchmarks/bench_pass_rate.py --model-dir models/base --problems data/prepared/rl_train.jsonl \\
        [--limit 24] [--n 8] [--temperature 0.7] [--max-new-tokens 160] [--template "{problem}\\nPut ..."]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter

DEFAULT = "{problem}\nPut your final answer within \\boxed{{}}."


def main() -> None:
    from transformers import AutoTokenizer

    from bridgerl.config import RolloutConfig
    from bridgerl.model.prompts import render_prompt
    from bridgerl.rewards import judge
    from bridgerl.rollout import make_engine

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--problems", required=True, help="JSONL with problem, answer (data_source: default synthetic)")
    ap.add_argument("--limit", type=int, default=24)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--max-new-tokens", type=int, default=160)
    ap.add_argument("--template", default=DEFAULT)
    ap.add_argument("--kv-cache-gb", type=float, default=2.0)
    a = ap.parse_args()
    tok = AutoTokenizer.from_pretrained(a.model_dir)
    probs = [json.loads(x) for x in open(a.problems)][:a.limit]
    ids = [tok(render_prompt(p["problem"], tok, a.template), add_special_tokens=False)["input_ids"] for p in probs]
    eng = make_engine("vllm", a.model_dir, RolloutConfig(kv_cache_gb=a.kv_cache_gb, max_model_len=1024), seed=0)
    try:
        t = time.perf_counter()
        sampled = eng.generate(ids, a.n, a.temperature, 1.0, a.max_new_tokens, seeds=list(range(len(ids))))
        greedy = eng.generate(ids, 1, 0.0, 1.0, a.max_new_tokens)
        wall = time.perf_counter() - t
    finally:
        eng.close()
    right, anyright, ntok, finish = 0, 0, 0, Counter()
    for p, group, (g,) in zip(probs, sampled, greedy):
        ds = p.get("data_source", "synthetic")
        ok = [judge(ds, tok.decode(r.token_ids, skip_special_tokens=True), str(p["answer"]))[1] for r in group]
        ext, gok = judge(ds, tok.decode(g.token_ids, skip_special_tokens=True), str(p["answer"]))
        right, anyright = right + sum(ok), anyright + any(ok)
        ntok += sum(len(r.token_ids) for r in group)
        finish.update(r.finish_reason for r in group)
        print(f"{sum(ok)}/{a.n}  greedy {'right' if gok else 'wrong'} ({ext!r}, gold {p['answer']})  {p['problem'][:70]}")
    total = len(probs) * a.n
    print(f"\ntemperature {a.temperature}, template {a.template!r}")
    print(f"samples right {right / total:.1%} ({right}/{total}); problems with any right {anyright}/{len(probs)}; "
          f"truncated {finish['length'] / total:.0%}; tokens per sample {ntok / total:.0f}; {wall:.0f} s")


if __name__ == "__main__":
    main()
