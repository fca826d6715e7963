"""`bridgerl register`: log the trained model to MLflow, register it, point alias `challenger` at it.

Inputs: train.out_dir (or --model), eval.metrics_file (it must record this model's sha256: metrics of
another model or of scored predictions are refused), dvc.lock in the working directory (provenance,
when present). Output: registry.out_file {name, version, run_id, model_uri, key, aliases, metric, ...}.

The model is logged with the MLflow transformers flavor, served one of two ways (`serving`):
- a chat model (its tokenizer has a chat template, eval.use_chat_template): MLflow's chat task
  (`llm/v1/chat`, OpenAI-style `{"messages": [...]}` in, a chat completion out); the prompt is the
  messages through the model's chat template and nothing else, so "What is the capital of France?" is
  asked as such; the model card gives the evaluation prompt to send for a problem as evaluated;
- a model without a chat template (the embedded tiny model): text-generation, a problem in, the
  evaluation prompt as prompt template, the generation settings as signature params.
Both are greedy by default (evaluation's settings as model config). The version carries its provenance as tags: git commit, DVC
hashes, a hash of the resolved params, method, base model, every evaluation metric
(`metric.<key>`), the Kubeflow run id under Kubeflow. Registration is resumable: see
bridgerl.tracking.registry (a rerun completes a version left pending, it never registers the same model
twice). With registry.auto_promote the promotion gate runs right after.

Lineage: the model is logged as an output of the run that trained it (found by the trained model's
sha256, which the train run records; bridgerl.tracking.lineage) and the version's source run is that train
run; the register run takes the model as an input. The version also carries the hashes of the data
and base model the train run read (`data.<key>` tags, from the artifacts themselves, so also under
Kubeflow), and a description (a short model card); the registered model gets a description once.
Without a train run in the tracking store (tracking was off, or `--model` elsewhere) the register
run is the source run, as before, with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from importlib import metadata
from pathlib import Path
from typing import Callable

from bridgerl.config import Config, ConfigError
from bridgerl.core.io import DataError, digest, read_json, write_json
from bridgerl.tracking import client, lineage, registry
from bridgerl.tracking.runs import git_commit, stage_run, tracking_uri

log = logging.getLogger(__name__)

INPUT_EXAMPLE = "Ava has 3 apples. She buys 4 more apples. How many apples does Ava have now?"
_SENTINEL = "\x00BRIDGERL_PROMPT\x00"

_LOAD_LOCK = threading.Lock()


def dvc_hashes(lock: Path = Path("dvc.lock")) -> dict[str, str]:
    """md5 of each DVC output from dvc.lock (data, demos, base/trained model), for provenance tags; only when
    DVC runs this stage (it sets DVC_STAGE): outside DVC the committed lock describes other outputs."""
    if not os.environ.get("DVC_STAGE") or not lock.exists():
        return {}
    import yaml

    try:
        data = yaml.safe_load(lock.read_text()) or {}
    except yaml.YAMLError as e:
        raise DataError(f"{lock}: not valid YAML: {e}") from None
    out = {}
    for stage, spec in (data.get("stages") or {}).items():
        if stage == "register":  # our own previous output: not provenance of the model
            continue
        for o in (spec or {}).get("outs", []) or []:
            if isinstance(o, dict) and "md5" in o:
                out[f"dvc.{stage}.{o['path']}"] = str(o["md5"])
    return out


def eval_metrics(cfg: Config) -> dict[str, float]:
    """eval.metrics_file flattened to avg_accuracy and <benchmark>_accuracy."""
    path = cfg.eval.metrics_file
    m = read_json(path)
    try:
        flat = {"avg_accuracy": float(m["avg_accuracy"])}
        flat.update({f"{n}_accuracy": float(b["accuracy"]) for n, b in m["benchmarks"].items()})
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise DataError(f"{path}: expected {{benchmarks: {{name: {{accuracy}}}}, avg_accuracy}} ({e!r})") from None
    if cfg.registry.metric not in flat:
        raise ConfigError(f"registry.metric = {cfg.registry.metric!r}: not in {path} (has: {', '.join(sorted(flat))})")
    return flat


def provenance(cfg: Config, metrics: dict[str, float]) -> dict[str, str]:
    tags = {"git_commit": git_commit(), "params_hash": cfg.digest(), "method": cfg.train.method,
            "base_model": cfg.model.base, **dvc_hashes(),
            **{f"{registry.METRIC_TAG_PREFIX}{k}": repr(v) for k, v in metrics.items()}}
    if os.environ.get("KFP_RUN_ID"):
        tags["kubeflow_run_id"] = os.environ["KFP_RUN_ID"]
    return {k: str(v) for k, v in tags.items()}


model_digest = digest  # the model's content hash, also recorded by `bridgerl evaluate`


def check_evaluated(cfg: Config, model_dir: Path, digest: str) -> None:
    """Refuse metrics that were not produced from this model (another model, or scored predictions)."""
    path = cfg.eval.metrics_file
    m = read_json(path)
    got = m.get("model_sha256") if isinstance(m, dict) else None
    if got != digest:
        what = (f"they were scored from predictions ({m.get('backend')})" if isinstance(m, dict) and m.get("backend") ==
                "predictions" else f"they were produced from model {m.get('model')!r} with sha256 {got}" if got
                else "they record no model hash")
        raise DataError(f"{path}: these metrics are not an evaluation of {model_dir} (sha256 {digest[:12]}): {what}; "
                        f"run `bridgerl evaluate --model {model_dir}` first")


def model_card(cfg: Config, metrics: dict[str, float], tags: dict[str, str], serving_line: str = "") -> str:
    """The version description: method, base model, data, metrics, where it came from."""
    t, d = cfg.train, cfg.data
    sources = ", ".join(f"{s.name} ({s.kind}{': ' + s.path if s.path else ''}"
                        f"{'@' + s.revision if getattr(s, 'revision', None) else ''})" for s in d.rl_sources)
    lines = [f"**{t.method}** fine-tune of `{cfg.model.base}`"
             + (f" @ {cfg.model.revision}" if cfg.model.revision else "") + " (bridgerl).",
             f"- training: {t.epochs} epoch(s)" if t.epochs else f"- training: {t.steps} steps",
             f"- RL problems: {sources}; demonstrations: {cfg.demos.source}",
             "- evaluation: " + ", ".join(f"{k} = {v:.4f}" for k, v in sorted(metrics.items())),
             f"- config digest `{tags.get('params_hash')}`, git `{tags.get('git_commit', '')[:12]}`"]
    data = {k: v for k, v in tags.items() if k.startswith(lineage.PARENT_TAG)}
    if data:
        lines.append("- data: " + ", ".join(f"{k[len(lineage.PARENT_TAG):]} sha256 {v[:12]}" for k, v in sorted(data.items())))
    if serving_line:
        lines.append(serving_line)
    return "\n".join(lines)


MODEL_DESCRIPTION = ("Reasoning LLMs fine-tuned by bridgerl (cooperative SFT + RL, BRIDGE and baselines). "
                     "Each version's description is its model card; tags carry the provenance and `metric.<key>`; "
                     "alias `challenger` is the latest registration, `champion` the promoted one.")


def generation_config(cfg: Config) -> dict:
    """The served model's generation defaults, also the signature's params: a caller may pass any of
    them per request (`params={"do_sample": True, "temperature": 0.7, "top_p": 0.95}`). Greedy
    evaluation (eval.temperature = 0) is served greedy, with the neutral temperature/top_p 1.0."""
    e = cfg.eval
    sample = e.temperature > 0
    return {"max_new_tokens": e.max_new_tokens, "do_sample": sample, "return_full_text": False,
            "temperature": e.temperature if sample else 1.0, "top_p": e.top_p if sample else 1.0}


def serves_chat(cfg: Config, tokenizer) -> bool:
    """Whether the model is served as a chat model (MLflow's llm/v1/chat): it has a chat template and
    evaluation asked through it."""
    return bool(cfg.eval.use_chat_template and getattr(tokenizer, "chat_template", None))


def serving(cfg: Config, tokenizer) -> str:
    """How the served model builds its prompt, for the model card."""
    e = cfg.eval
    decoding = (f"greedy, up to {e.max_new_tokens} new tokens" if e.temperature == 0 else
                f"temperature {e.temperature}, top_p {e.top_p}, up to {e.max_new_tokens} new tokens")
    if serves_chat(cfg, tokenizer):
        return ("- serving: chat (`llm/v1/chat`): `{\"messages\": [{\"role\": \"user\", \"content\": ...}]}`; "
                "the prompt is the messages through the model's chat template, nothing added; " + decoding
                + "; to ask a problem as it was evaluated, send as the user message: `"
                + e.prompt_template.replace("{{", "{").replace("}}", "}") + "`")
    return ("- serving: text generation: a problem (a string) in, asked as `" + e.prompt_template.replace("{{", "{")
            .replace("}}", "}") + "` (the evaluation prompt; the model has no chat template); " + decoding)


def prompt_template(cfg: Config, tokenizer) -> str:
    """The evaluation prompt (chat template included) with `{prompt}` where the user's text goes."""
    from bridgerl.model.prompts import render_prompt

    text = render_prompt(_SENTINEL, tokenizer, cfg.eval.prompt_template, cfg.eval.use_chat_template)
    return text.replace("{", "{{").replace("}", "}}").replace(_SENTINEL, "{prompt}")


def _requirements() -> list[str]:
    """Serving requirements any public index resolves: exact pins of the installed versions without
    local labels (`torch==2.13.0+cpu` → `torch==2.13.0`, which PyPI serves for CPU and CUDA alike).
    (mlflow's inference would also demand torchvision, which we don't use.)"""
    from packaging.version import Version

    return [f"{p}=={Version(metadata.version(p)).public}"
            for p in ("mlflow", "transformers", "tokenizers", "torch", "safetensors")]


def _train_run(cfg: Config, mlc, model_dir: Path, digest: str):
    exp = mlc.get_experiment_by_name(cfg.tracking.experiment)
    run = lineage.train_run_for(mlc, [exp.experiment_id], digest) if exp else None
    if run is None:
        log.warning("no train run in %s recorded this model (%s); the register run will be the version's source "
                    "run", tracking_uri(cfg), model_dir)
    return run


def lineage_tags(train_run) -> dict[str, str]:
    """`data.<key>` version tags: the hashes of what the train run read, and the run itself."""
    if train_run is None:
        return {}
    tags = {lineage.PARENT_TAG + k[len(lineage.INPUT_TAG):]: v for k, v in train_run.data.tags.items()
            if k.startswith(lineage.INPUT_TAG)}
    return {**tags, "train_run_id": train_run.info.run_id}


def _log_and_register(cfg: Config, mlc, model_dir: Path, metrics: dict, tags: dict[str, str], key: str,
                      train_run=None):
    """One attempt: log the model (as an output of its train run when known) and create a pending version."""
    import mlflow
    from mlflow.entities import LoggedModelInput
    from mlflow.models import infer_signature
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = cfg.registry.model_name
    owner = {**registry.owner_tags(name), registry.KEY_TAG: key}  # on the run and its logged model from the start
    with stage_run(cfg, "register", tags=owner) as mlf:
        mlf.log_metrics(metrics)
        mlf.set_tags({"bridgerl.model_dir": str(model_dir)})
        source_run = train_run.info.run_id if train_run is not None else mlf.active_run().info.run_id
        gen = generation_config(cfg)
        # transformers' meta-device model construction is not thread-safe (a global default-device mode that
        # two threads can leave pushed): loading, and log_model, which loads the saved model again to check
        # the input example, hold one lock
        with _LOAD_LOCK:
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto")
            tok = AutoTokenizer.from_pretrained(model_dir)
            if serves_chat(cfg, tok):  # OpenAI-style chat messages through the chat template, nothing added
                info = mlflow.transformers.log_model(
                    transformers_model={"model": model, "tokenizer": tok}, name="model", task="llm/v1/chat",
                    input_example={"messages": [{"role": "user", "content": INPUT_EXAMPLE}]},
                    model_config={k: v for k, v in gen.items() if k != "return_full_text"},
                    pip_requirements=_requirements(), run_id=source_run, tags=owner)
            else:
                info = mlflow.transformers.log_model(
                    transformers_model={"model": model, "tokenizer": tok}, name="model", task="text-generation",
                    signature=infer_signature([INPUT_EXAMPLE], ["generated text"], params=gen),
                    input_example=[INPUT_EXAMPLE], model_config=gen, prompt_template=prompt_template(cfg, tok),
                    pip_requirements=_requirements(), run_id=source_run, tags=owner)
            card = model_card(cfg, metrics, tags, serving(cfg, tok))
        mlflow.log_input(model=LoggedModelInput(info.model_id))  # the register run consumed this model
        try:
            mlc.create_registered_model(name, description=MODEL_DESCRIPTION)
        except mlflow.exceptions.MlflowException as e:
            if e.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise
        return mlc.create_model_version(name, source=info.model_uri, run_id=source_run, model_id=info.model_id,
                                        description=card, await_creation_for=0,
                                        tags={**tags, registry.KEY_TAG: key, registry.STATE_TAG: registry.PENDING})


def _experiments(cfg: Config, mlc) -> list[str]:
    exp = client.call(cfg, f"read experiment {cfg.tracking.experiment}", mlc.get_experiment_by_name,
                        cfg.tracking.experiment)
    return [exp.experiment_id] if exp else []


def repair(cfg: Config) -> dict:
    """`bridgerl register --repair`: register nothing; collapse duplicate versions of one registration,
    delete abandoned pending versions, end the runs of killed registers and delete the models they logged
    that no version uses (what every register also does after registering)."""
    if not cfg.tracking.enabled:
        raise ConfigError("tracking.enabled = False: `bridgerl register --repair` needs MLflow")
    name = cfg.registry.model_name
    with client.http_settings(cfg):
        mlc = client.connect(cfg)
        found = client.call(cfg, f"list versions of {name}", mlc.search_model_versions,
                              f"name = '{client.quote(name)}'")
        keys = sorted({mv.tags[registry.KEY_TAG] for mv in found if registry.KEY_TAG in mv.tags})
        deleted: list[str] = []
        for key in keys:
            mv = registry.find_version(mlc, name, key)
            if mv is not None:
                deleted += registry.settle_duplicates(cfg, mlc, mv)[1]
        deleted += registry.clean_stale(cfg, mlc, keep_version=None)
        repaired = registry.clean_abandoned(cfg, mlc, _experiments(cfg, mlc))
    return {"name": name, "deleted_versions": deleted, **repaired}


def skip_reason(cfg: Config) -> str | None:
    """Why this run does not register (registry.register), or None."""
    mode = cfg.registry.register
    if mode is False:
        return "registry.register = false"
    if mode == "auto" and os.environ.get("DVC_EXP_NAME"):
        return (f"DVC experiment {os.environ['DVC_EXP_NAME']!r} (registry.register = auto registers from dvc repro, "
                f"Kubeflow and the command line, not from dvc exp run; -S registry.register=true to register it)")
    return None


def run(cfg: Config, model_dir: str | None = None, on_registered: Callable | None = None) -> dict:
    """Register (or finish registering) the model; `on_registered(version)` runs between creating the
    version and completing it (tests stop the tracking server there)."""
    skip = skip_reason(cfg)
    if skip:
        log.warning("not registering: %s", skip)
        result = {"name": cfg.registry.model_name, "registered": False, "reason": skip}
        write_json(cfg.registry.out_file, result)
        return result
    if not cfg.tracking.enabled:
        raise ConfigError("tracking.enabled = False: `bridgerl register` needs MLflow (set tracking.enabled=true)")
    model_dir = Path(model_dir or cfg.train.out_dir)
    if not (model_dir / "config.json").exists():
        raise DataError(f"{model_dir}: not a model directory (no config.json; did `bridgerl train` run?)")
    digest = model_digest(model_dir)
    check_evaluated(cfg, model_dir, digest)
    metrics = eval_metrics(cfg)
    tags = {**provenance(cfg, metrics), "model_sha256": digest}
    with client.http_settings(cfg):
        train_run = client.call(cfg, "find the train run of this model", _train_run, cfg, client.connect(cfg),
                                  model_dir, digest)
    tags.update(lineage_tags(train_run))
    # same model + same evaluation = same registration (a rerun finds its version, whatever else changed)
    key = hashlib.sha256(json.dumps({"model": digest, "metrics": metrics}, sort_keys=True).encode()).hexdigest()[:32]
    name = cfg.registry.model_name
    with client.http_settings(cfg):
        mlc = client.connect(cfg)
        client.call(cfg, "reach the tracking server", mlc.search_experiments, max_results=1)
        mv = client.call(cfg, "look up this registration", registry.find_version, mlc, name, key)
        resumed = mv is not None
        if resumed:
            log.warning("version %s of %s already holds this registration (%s=%s); completing it", mv.version, name,
                        registry.STATE_TAG, mv.tags.get(registry.STATE_TAG))
        else:
            mv = client.call(cfg, f"log and register the model as {name}",
                               lambda: registry.find_version(mlc, name, key)
                               or _log_and_register(cfg, mlc, model_dir, metrics, tags, key, train_run))
        if on_registered is not None:
            on_registered(mv)
        # a registration racing this one may have created a version of the same key: both keep the same one
        mv, duplicates = registry.settle_duplicates(cfg, mlc, mv)
        mv = registry.complete_version(cfg, mlc, mv, tags)
        deleted = duplicates + registry.clean_stale(cfg, mlc, mv.version)
        repaired = registry.clean_abandoned(cfg, mlc, _experiments(cfg, mlc))
        rm = client.call(cfg, f"read registered model {name}", mlc.get_registered_model, name)
    version = str(mv.version)
    result = {"name": name, "registered": True, "version": version, "run_id": mv.run_id,
              "model_uri": f"models:/{name}/{version}",
              "tracking_uri": tracking_uri(cfg), "key": key, "resumed": resumed, "deleted_stale": deleted,
              **repaired,
              "aliases": sorted(a for a, v in registry.aliases(rm).items() if v == version),
              "challenger": registry.aliases(rm).get(registry.CHALLENGER),
              "metric": {cfg.registry.metric: metrics[cfg.registry.metric]}}
    if cfg.registry.auto_promote:
        try:
            result["promotion"] = registry.promote(cfg, version=version, mlc=mlc)
        except registry.PromotionRefused as e:
            log.warning("auto-promotion refused: %s", e)
            result["promotion"] = e.details
    write_json(cfg.registry.out_file, result)
    return result
