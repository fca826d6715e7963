"""Secrets in configuration values (issue 27 item 7): credentials in `demos.endpoint.base_url`, keys in
`demos.endpoint.extra_body` never reach MLflow params, the config.json artifacts, `bridgerl config`'s
output or the endpoint client's errors; what is not a secret (max_new_tokens, api_key_env) stays."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO, make_cfg, run_cli

from bridgerl.config import REDACTED, redact, redact_text

SECRETS = ("hunter2pw", "sk-live-123456", "tok-abcdef", "sigvalue99")
OVERRIDES = ["demos.endpoint.base_url=https://alice:hunter2pw@teacher.example.com/v1?api_key=sigvalue99",
             "demos.endpoint.extra_body={api_key: sk-live-123456, headers: {X-Api-Key: tok-abcdef}, top_k: 20}"]


def _clean(text: str) -> None:
    leaked = [s for s in SECRETS if s in text]
    assert not leaked, f"secrets leaked: {leaked}"


def test_redact_keeps_what_is_not_a_secret():
    cfg = {"api_key_env": "OPENAI_API_KEY", "max_new_tokens": 64, "sft_max_tokens": 8, "apiKey": "x1",
           "access_token": "x2", "Authorization": "Bearer x3", "password": "x4", "token": None,
           "url": "http://u:p@h:1/v1?token=x5&model=m", "nested": [{"secret": "x6"}]}
    out = redact(cfg)
    assert out["api_key_env"] == "OPENAI_API_KEY" and out["max_new_tokens"] == 64 and out["sft_max_tokens"] == 8
    assert out["apiKey"] == out["access_token"] == out["Authorization"] == out["password"] == REDACTED
    assert out["token"] is None  # nothing to hide
    assert out["url"] == f"http://{REDACTED}@h:1/v1?token={REDACTED}&model=m"
    assert out["nested"] == [{"secret": REDACTED}]
    assert cfg["apiKey"] == "x1", "redact returns a copy"
    assert redact_text("see https://teacher.example.com/v1 now") == "see https://teacher.example.com/v1 now"


def test_stage_runs_log_no_secret(project, monkeypatch):
    import mlflow
    from mlflow import MlflowClient

    from bridgerl.stages import prepare

    monkeypatch.chdir(project)
    uri = f"sqlite:///{project / 'secrets.db'}"
    cfg = make_cfg(project, "tracking.enabled=true", f"tracking.uri={uri}", *OVERRIDES)
    assert "hunter2pw" in cfg.demos.endpoint.base_url  # the stages themselves get the real value
    prepare.run(cfg)
    mlc = MlflowClient(tracking_uri=uri)
    exp = mlc.get_experiment_by_name(cfg.tracking.experiment)
    runs = mlc.search_runs([exp.experiment_id])
    assert {r.data.tags.get("bridgerl.stage") for r in runs} >= {"prepare", "pipeline"}
    for r in runs:
        _clean(json.dumps(r.data.params))
        assert r.data.params.get("train.grpo.max_new_tokens", "16") == "16"
        root = Path(mlc.download_artifacts(r.info.run_id, ""))
        for f in root.rglob("*.json"):
            _clean(f.read_text())
    stage = next(r for r in runs if r.data.tags.get("bridgerl.stage") == "prepare")
    assert stage.data.params["demos.endpoint.extra_body.api_key"] == REDACTED
    assert stage.data.params["demos.endpoint.api_key_env"] == "OPENAI_API_KEY"
    mlflow.set_tracking_uri(None)


def test_config_command_prints_no_secret():
    p = run_cli("config", "-P", str(REPO / "params.yaml"), *[a for o in OVERRIDES for a in ("-S", o)])
    _clean(p.stdout + p.stderr)
    assert "teacher.example.com" in p.stdout and "top_k: 20" in p.stdout


def test_endpoint_errors_name_the_url_without_its_credentials():
    from bridgerl.demos.client import ChatClient, EndpointUnavailable

    c = ChatClient("http://alice:hunter2pw@127.0.0.1:9/v1?api_key=sigvalue99", "m", "sk-live-123456",
                   max_retries=0, timeout_s=5)
    with pytest.raises(EndpointUnavailable) as e:
        c.complete([{"role": "user", "content": "hi"}], temperature=0.0, top_p=1.0, max_tokens=4)
    _clean(str(e.value) + repr(c))
    assert "127.0.0.1:9" in str(e.value)
