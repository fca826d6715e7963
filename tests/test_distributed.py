"""Distributed training: DeepSpeed config (train/engines.py), launcher decisions (launch.py), sharding
(train/parallel.py), seeded rollouts; and, with 2 torchrun processes on the gloo backend, BRIDGE under
ZeRO-2 / ZeRO-3 against the single-process run (gradient clipping active on both engines), a ZeRO
checkpoint resume, and the export."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import torch
from conftest import make_cfg, run_cli

from bridgerl.config import ConfigError
from bridgerl.launch import local as launch
from bridgerl.rollout import seeded_sampling as S
from bridgerl.train import parallel as P
from bridgerl.train.engines import ds_config

# --------------------------------------------------------------------------------------------
# fast, in one process
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("world,mini", [(1, 1), (2, 1), (2, 2), (4, 2)])
def test_ds_config_batch_sizes_consistent(tmp_path, world, mini):
    cfg = make_cfg(tmp_path, "train.distributed.strategy=zero3", "train.distributed.offload=true",
                   "train.prompt_batch=8", "train.grpo.group_size=5", f"train.grpo.mini_batches={mini}",
                   "train.max_grad_norm=0.5", "train.distributed.deepspeed={zero_optimization: {reduce_bucket_size: 1000}}")
    c = ds_config(cfg, world, torch.bfloat16)
    assert c["train_batch_size"] == c["train_micro_batch_size_per_gpu"] * c["gradient_accumulation_steps"] * world
    assert c["train_batch_size"] == 8 * 5 // mini  # sequences per optimizer step, all ranks together
    assert c["bf16"]["enabled"] and not c["fp16"]["enabled"]
    z = c["zero_optimization"]
    assert z["stage"] == 3 and z["offload_optimizer"]["device"] == "cpu" and z["offload_param"]["device"] == "cpu"
    assert z["reduce_bucket_size"] == 1000 and c["gradient_clipping"] == 0.5
    c32 = ds_config(make_cfg(tmp_path, "train.distributed.strategy=zero2"), world, torch.float32)
    assert not c32["bf16"]["enabled"] and "offload_param" not in c32["zero_optimization"]


def test_deepspeed_overrides_cannot_set_batch_sizes(tmp_path):
    with pytest.raises(ConfigError, match="train_batch_size"):
        make_cfg(tmp_path, "train.distributed.deepspeed={train_batch_size: 64}")


def test_launcher_decisions(tmp_path):
    zero = make_cfg(tmp_path, "train.distributed.strategy=zero2")
    none = make_cfg(tmp_path)
    # --nproc on one node: torchrun --standalone
    cmd = launch.spawn_command(zero, 2, environ={})
    assert cmd[1:3] == ["-m", "torch.distributed.run"] and "--standalone" in cmd and "--nproc_per_node=2" in cmd
    assert launch.spawn_command(zero, None, environ={}) is None  # nproc defaults to train.distributed.nproc = 1
    with pytest.raises(ConfigError, match="strategy"):
        launch.spawn_command(none, 2, environ={})
    # already a torchrun worker: run, don't spawn
    assert launch.spawn_command(zero, 2, environ={"LOCAL_RANK": "1", "WORLD_SIZE": "2", "RANK": "1"}) is None
    # Kubeflow: torchrun takes nodes/rank/master from PET_*; no --standalone
    kf = launch.spawn_command(zero, None, environ={"PET_NNODES": "2", "PET_NPROC_PER_NODE": "4", "PET_NODE_RANK": "1"})
    assert kf[1:] == ["-m", "torch.distributed.run"]
    with pytest.raises(ConfigError, match="PET_NNODES"):
        launch.spawn_command(none, None, environ={"PET_NNODES": "2", "PET_NPROC_PER_NODE": "1"})
    # one process per pod (PyTorchJob without torchrun): a worker already
    env = {"WORLD_SIZE": "4", "RANK": "3", "MASTER_ADDR": "x"}
    assert launch.spawn_command(zero, None, environ=env) is None
    assert P.detect(env) == P.ProcEnv(rank=3, world_size=4, local_rank=0)
    assert P.detect({}) == P.ProcEnv()


def test_shards_follow_the_minibatches():
    n, world, blocks = 12, 2, 3
    shards = [P.shard_positions(n, world, r, blocks) for r in range(world)]
    assert sorted(p for s in shards for p in s) == list(range(n))
    for s in shards:  # rank-local mini-batch k lies inside global mini-batch k
        local_blocks = [s[i * 2:(i + 1) * 2] for i in range(blocks)]
        for k, lb in enumerate(local_blocks):
            assert all(k * 4 <= p < (k + 1) * 4 for p in lb)
    with pytest.raises(ValueError):
        P.shard_positions(10, 2, 0, 3)


def test_seeded_sampling_does_not_depend_on_the_batch(tiny_project):
    from bridgerl.model.loading import load_model, load_tokenizer
    from bridgerl.rollout.generation import generate

    base = tiny_project / "models" / "base"
    tok, model = load_tokenizer(str(base)), load_model(str(base))
    prompts = ["Tom has 3 apples.", "A box holds 12 pens. 5 are taken.", "Start at 7, add 4.", "x"]
    seeds = S.row_seeds(0, 5, [10, 11, 12, 13])

    def run(ps, ss):
        return generate(model, tok, ps, 12, temperature=0.0, batch_size=len(ps),
                        logits_processor=[S.SeededSampling(ss, temperature=1.0)]).response_ids

    together = run(prompts, seeds)
    apart = run(prompts[:2], seeds[:2]) + run(prompts[2:], seeds[2:])
    assert together == apart
    other = run(prompts, S.row_seeds(0, 6, [10, 11, 12, 13]))
    assert other != together  # it samples; it is not greedy decoding
    greedy = generate(model, tok, prompts, 12, temperature=0.0, batch_size=4).response_ids
    assert greedy != together


def test_cli_nproc_needs_a_zero_strategy(tiny_project):
    from conftest import FAST, REPO, path_overrides

    args = [a for o in FAST + path_overrides(tiny_project) for a in ("-S", o)]
    p = run_cli("train", "-P", str(REPO / "params.yaml"), *args, "--nproc", "2", check=False)
    assert p.returncode == 2 and "train.distributed.strategy" in p.stderr


# --------------------------------------------------------------------------------------------
# 2 processes under torchrun (gloo on CPU)
# --------------------------------------------------------------------------------------------
# same global batch and seed everywhere; rollouts seeded per (step, prompt, sample) so that they do not
# depend on the number of processes; kl_coef large so that the shadow and w's shadow term get gradients
# even when no rollout is rewarded; gradient clipping active (the global norm on both engines)
MAX_GRAD_NORM = 0.1
COMMON = ["train.distributed.seeded_rollouts=true", f"train.max_grad_norm={MAX_GRAD_NORM}", "train.demo_batch=4",
          "train.prompt_batch=2", "train.steps=3", "train.grpo.kl_coef=0.5", "train.save_every=1",
          "train.keep_checkpoints=2"]


# DeepSpeed's comms logger: the trainer then reports each rollout batch's all-gathers (rollout_allgathers); no
# parameter persistence: ZeRO-3 keeps parameters below a size threshold whole on every rank, which is every
# parameter of the tiny model (nothing would be partitioned, nothing gathered)
COMMS_LOGGER = ("train.distributed.deepspeed={comms_logger: {enabled: true, prof_all: true, verbose: false}, "
                "zero_optimization: {stage3_param_persistence_threshold: 0}}")


def _train(root: Path, *overrides: str, extra: tuple[str, ...] = (), env: dict | None = None):
    from conftest import FAST, REPO, path_overrides

    args = [a for o in FAST + path_overrides(root) + COMMON + list(overrides) for a in ("-S", o)]
    return run_cli("train", "-P", str(REPO / "params.yaml"), *args, *extra,
                   env={"OMP_NUM_THREADS": "1", **(env or {})}, timeout=900)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoints", "trained", "metrics", "plots"))
    return dst


@pytest.fixture(scope="module")
def runs(tiny_project, tmp_path_factory):
    """The single-process run, and the same run on 2 processes under ZeRO-2, ZeRO-3, ZeRO-2 + offload."""
    base = tmp_path_factory.mktemp("dist")
    out = {}
    out["single"] = _copy(tiny_project, base / "single")
    _train(out["single"], f"train.rollout.dump_dir={out['single'] / 'rollouts'}")
    out["zero2"] = _copy(tiny_project, base / "zero2")
    _train(out["zero2"], "train.distributed.strategy=zero2", "tracking.enabled=true", extra=("--nproc", "2"))
    out["zero3"] = _copy(tiny_project, base / "zero3")
    _train(out["zero3"], "train.distributed.strategy=zero3", f"train.rollout.dump_dir={out['zero3'] / 'rollouts'}",
           COMMS_LOGGER, extra=("--nproc", "2"))
    out["zero2_offload"] = _copy(tiny_project, base / "zero2_offload")
    _train(out["zero2_offload"], "train.distributed.strategy=zero2", "train.distributed.offload=true",
           extra=("--nproc", "2"))
    return out


def _single_state(root: Path) -> dict[str, torch.Tensor]:
    ck = sorted((root / "checkpoints" / "train").glob("step-*"))[-1] / "state.pt"
    st = torch.load(ck, map_location="cpu", weights_only=False)
    out = {f"policy.{k}": v for k, v in st["policy"].items()}
    out.update({f"shadow.{k}": v for k, v in st["shadow"].items()})
    return out


def _zero_state(root: Path) -> dict[str, torch.Tensor]:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(root / "checkpoints" / "train"))


def _assert_same(ref: dict, got: dict, atol: float = 2e-5) -> None:
    keys = [k for k in ref if k.startswith(("policy.", "shadow.")) and "rotary" not in k]
    assert any("shadow." in k and "lora" not in k for k in keys) and any("lora_" in k for k in keys)
    for k in keys:
        assert k in got, f"{k} missing"
        torch.testing.assert_close(got[k].float(), ref[k].float(), atol=atol, rtol=1e-4, msg=f"{k} differs")


def _moved(root: Path, state: dict) -> float:
    """How far training moved θ̂ from the initial base weights (the comparison must not be trivial)."""
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(root / "models" / "base").state_dict()
    k = "shadow.base_model.model.model.layers.0.mlp.up_proj.base_layer.weight"
    return (state[k] - base["model.layers.0.mlp.up_proj.weight"]).abs().max().item()


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["zero2", "zero3", "zero2_offload"])
def test_bridge_under_zero_matches_single_process(runs, strategy):
    ref = _single_state(runs["single"])
    got = _zero_state(runs[strategy])
    assert _moved(runs["single"], ref) > 1e-4
    _assert_same(ref, got)
    # clipping was active at every step, and both engines measured the same global norm before clipping
    norms = {k: [float(r["grad_norm"]) for r in csv.DictReader(open(runs[k] / "plots" / "train_curve.csv"))]
             for k in ("single", strategy)}
    assert len(norms["single"]) == 3 and all(n > MAX_GRAD_NORM for n in norms["single"])
    assert norms[strategy] == pytest.approx(norms["single"], rel=1e-3)
    # the ranks' trained tokens add up to one process's (the same global batches, split)
    assert _curve(runs[strategy], "trained_tokens") == _curve(runs["single"], "trained_tokens")
    # the exported models (θ with w merged) agree too, and are plain transformers models
    from transformers import AutoModelForCausalLM

    a = AutoModelForCausalLM.from_pretrained(runs["single"] / "models" / "trained").state_dict()
    b = AutoModelForCausalLM.from_pretrained(runs[strategy] / "models" / "trained").state_dict()
    base = AutoModelForCausalLM.from_pretrained(runs[strategy] / "models" / "base").state_dict()
    assert set(b) == set(base), "export must carry exactly the base architecture's weights (no LoRA, no shadow)"
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=2e-5, rtol=1e-4)


def _dumped_rollouts(root: Path) -> dict:
    """{(step, problem id, sample): response token ids} from every rank's train.rollout.dump_dir files."""
    import json

    out = {}
    for f in sorted((root / "rollouts").glob("step-*.jsonl")):
        for line in f.read_text().splitlines():
            r = json.loads(line)
            out[(r["step"], r["id"], r["sample"])] = r["response_ids"]
    return out


def _curve(root: Path, column: str) -> list[float]:
    return [float(r[column]) for r in csv.DictReader(open(root / "plots" / "train_curve.csv"))]


@pytest.mark.slow
def test_zero3_rollouts_equal_single_process(runs):
    """Generated from a gathered, merged copy of π(θ, w) on each of 2 ZeRO-3 ranks: the same rollouts, token
    for token, as one process (seeded per row), at every step."""
    single, zero3 = _dumped_rollouts(runs["single"]), _dumped_rollouts(runs["zero3"])
    assert len(single) == 3 * 2 * 3  # steps × prompts × group
    assert zero3 == single
    assert len(list((runs["zero3"] / "rollouts").glob("step-000001.rank*.jsonl"))) == 2


@pytest.mark.slow
def test_zero3_rollout_allgathers_do_not_grow_with_the_output_length(runs, tiny_project, tmp_path):
    """Gathered once per rollout batch: the all-gathers of a batch (weight sync + generation, counted by
    DeepSpeed's comms logger) are the same for 16 and 48 new tokens; generating through the partitioned policy
    (train.rollout.hf_generation_copy=false, today's fallback) gathers at every token, so it grows."""
    once16 = _curve(runs["zero3"], "rollout_allgathers")
    assert len(once16) == 3 and once16[0] > 0 and len(set(once16)) == 1

    def gathers(name: str, *over: str) -> tuple[float, float]:
        root = _copy(tiny_project, tmp_path / name)
        _train(root, "train.distributed.strategy=zero3", "train.steps=1", COMMS_LOGGER, *over, extra=("--nproc", "2"))
        return _curve(root, "rollout_allgathers")[0], _curve(root, "response_length")[0]

    once48, len48 = gathers("once48", "train.grpo.max_new_tokens=48")
    assert len48 > 16, "the test needs responses longer than the short run's budget"
    assert once48 == once16[0]
    live16, _ = gathers("live16", "train.rollout.hf_generation_copy=false")
    live48, _ = gathers("live48", "train.rollout.hf_generation_copy=false", "train.grpo.max_new_tokens=48")
    assert live48 > 2 * live16 > 2 * once16[0]


@pytest.mark.slow
def test_rank0_alone_logs_to_mlflow(runs):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{runs['zero2'] / 'mlruns.db'}")
    train_runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`bridgerl.stage` = 'train'")
    assert len(train_runs) == 1
    assert train_runs["metrics.final_steps"].iloc[0] == 3


@pytest.mark.slow
def test_zero_checkpoint_resumes_to_the_same_result(runs, tiny_project, tmp_path):
    import json

    root = _copy(tiny_project, tmp_path / "resumed")
    # --resume (nothing to resume yet) keeps the pipeline's paths: a bare --max-steps is an ad-hoc run in runs/
    _train(root, "train.distributed.strategy=zero3", extra=("--nproc", "2", "--resume", "--max-steps", "2"))
    assert (root / "checkpoints" / "train" / "latest").read_text().strip() == "step-000002"
    assert json.loads((root / "models" / "trained" / "bridgerl_train.json").read_text())["steps"] == 2
    _train(root, "train.distributed.strategy=zero3", extra=("--nproc", "2", "--resume"))
    _assert_same(_zero_state(runs["zero3"]), _zero_state(root), atol=1e-6)
    kept = sorted(p.name for p in (root / "checkpoints" / "train").glob("step-*"))
    assert kept == ["step-000002", "step-000003"]


class _Evil:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))  # unpickling it would create the marker file


def test_a_crafted_deepspeed_checkpoint_file_is_refused_without_running_it(runs, tmp_path):
    """DeepSpeed reads its checkpoint files with torch.load(weights_only=False): a pickle planted on the
    checkpoint volume (with a forged manifest: whoever writes the volume can write that too) would run code on
    resume (issue 27). Our reader takes plain tensors and DeepSpeed's few data classes only."""
    import json

    from bridgerl.train import checkpoint
    from bridgerl.train.engines import DS_MARKER

    root = shutil.copytree(runs["zero2"], tmp_path / "zero2")
    ckpts = root / "checkpoints" / "train"
    tag = ckpts / (ckpts / "latest").read_text().strip()
    marker = tmp_path / "pwned"
    (victim,) = tag.glob("mp_rank_00_model_states.pt")
    state = torch.load(victim, weights_only=False)
    torch.save({**state, "payload": _Evil(marker)}, victim)
    meta = json.loads((tag / DS_MARKER).read_text())
    checkpoint.write_manifest(tag, meta["resume_key"], meta["step"], name=DS_MARKER, world_size=meta["world_size"],
                              strategy=meta["strategy"])
    assert not marker.exists()
    from conftest import FAST, REPO, path_overrides

    args = [a for o in FAST + path_overrides(root) + COMMON + ["train.steps=4", "train.distributed.strategy=zero2"]
            for a in ("-S", o)]
    p = run_cli("train", "-P", str(REPO / "params.yaml"), *args, "--nproc", "2", "--resume",
                env={"OMP_NUM_THREADS": "1"}, check=False, timeout=900)
    assert not marker.exists(), "resuming unpickled the planted payload: it ran code"
    assert p.returncode != 0, p.stderr[-3000:]
    assert f"{victim}: cannot be loaded as plain tensors" in p.stderr, p.stderr[-3000:]


@pytest.mark.slow
def test_mixed_loss_with_minibatches_under_zero2_matches_single_process(tiny_project, tmp_path):
    """A baseline (RL + SFT in one loss) with 2 mini-batches per rollout batch: the shards follow them."""
    over = ["train.method=mixed", "train.grpo.mini_batches=2", "train.prompt_batch=4", "train.steps=2"]
    single = _copy(tiny_project, tmp_path / "single")
    _train(single, *over)
    zero = _copy(tiny_project, tmp_path / "zero2")
    _train(zero, *over, "train.distributed.strategy=zero2", extra=("--nproc", "2"))
    st = torch.load(sorted((single / "checkpoints" / "train").glob("step-*"))[-1] / "state.pt", weights_only=False)
    ref = {f"policy.{k}": v for k, v in st["policy"].items()}
    got = _zero_state(zero)
    assert st["shadow"] is None and not any(k.startswith("shadow.") for k in got)
    for k, v in ref.items():
        torch.testing.assert_close(got[k].float(), v.float(), atol=2e-5, rtol=1e-4, msg=f"{k} differs")


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["zero2", "zero3"])
def test_micro_batches_under_zero_match_single_process(tiny_project, tmp_path, strategy):
    """BRIDGE on 2 processes with micro-batches of ≤ 40 positions (several engine.backward calls before
    each step), packed rows, a chunked output layer and gradient checkpointing == the plain single-process
    run (whole mini-batches, full logits)."""
    single = _copy(tiny_project, tmp_path / "single")
    _train(single, "train.logprob_chunk_tokens=null")
    zero = _copy(tiny_project, tmp_path / strategy)
    _train(zero, f"train.distributed.strategy={strategy}", "train.micro_batch_tokens=40", "train.padding_free=true",
           "train.logprob_chunk_tokens=7", "train.gradient_checkpointing=true", extra=("--nproc", "2"))
    ref = _single_state(single)
    assert _moved(single, ref) > 1e-4
    _assert_same(ref, _zero_state(zero))


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["zero2", "zero3"])
def test_offloaded_shadow_under_zero_matches_single_process(tiny_project, tmp_path, strategy):
    """train.bridge.shadow_offload under ZeRO: θ̂ outside DeepSpeed (host memory, its own optimizer sharded over
    the ranks, gradients averaged over the 2 ranks), interrupted after 2 steps and resumed from the checkpoint
    == one process with the in-memory shadow (clipping not binding: under ZeRO the offloaded θ̂ is clipped by
    its own norm)."""
    over = ("train.max_grad_norm=1000",)
    single = _copy(tiny_project, tmp_path / "single")
    _train(single, *over)
    zero = _copy(tiny_project, tmp_path / strategy)
    args = (*over, f"train.distributed.strategy={strategy}", "train.bridge.shadow_offload=true", COMMS_LOGGER)
    _train(zero, *args, extra=("--nproc", "2", "--resume", "--max-steps", "2"))
    _train(zero, *args, extra=("--nproc", "2", "--resume"))
    ref = _single_state(single)
    assert _moved(single, ref) > 1e-4
    got = _zero_state(zero)
    assert not any(k.startswith("shadow.") for k in got), "DeepSpeed must not hold the offloaded θ̂"
    tag = (zero / "checkpoints" / "train" / "latest").read_text().strip()
    host = torch.load(zero / "checkpoints" / "train" / tag / "shadow_offload.pt", weights_only=False)
    got.update({f"shadow.{k}": v for k, v in host["shadow"].items()})
    # θ̂'s optimizer state, sharded over the ranks in training, is saved whole: every θ̂ tensor's moments
    assert len(host["optimizer"]["state"]) == len(host["shadow"]) > 1
    assert all(st["exp_avg"].abs().max() > 0 for st in host["optimizer"]["state"].values() if "exp_avg" in st)
    _assert_same(ref, got)
    assert max(_curve(zero, "grad_norm")) < 1000
    assert len(_curve(zero, "shadow_grad_norm")) == 3 and max(_curve(zero, "shadow_grad_norm")) > 0
