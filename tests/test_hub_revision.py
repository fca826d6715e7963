"""Hub datasets are loaded at their pinned `revision`; the data card records it (and flags unpinned
sources, which also log a warning). The hub is replaced by a recorder of `load_dataset` calls
(tests run offline)."""

from __future__ import annotations

import json
import logging

import pytest
from conftest import make_cfg

from bridgerl.stages import prepare

ROWS = [{"prompt": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(40)]


@pytest.fixture
def hub(monkeypatch):
    import datasets

    calls = []

    def load_dataset(path, name=None, split=None, revision=None, **kw):
        calls.append({"path": path, "revision": revision})
        return ROWS

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


SOURCE = "data.rl_sources=[{name: limr, kind: hub, path: GAIR/LIMR, fields: {id: null, problem: prompt}%s}]"


def test_pinned_revision_reaches_the_hub_and_the_data_card(tmp_path, hub, caplog):
    cfg = make_cfg(tmp_path, SOURCE % ", revision: 0a1b2c3d")
    with caplog.at_level(logging.WARNING):
        prepare.run(cfg)
    assert hub == [{"path": "GAIR/LIMR", "revision": "0a1b2c3d"}]
    card = json.loads((tmp_path / "data/prepared/data_card.json").read_text())
    prov = card["rl"]["provenance"]["limr"]
    assert prov["revision"] == "0a1b2c3d" and prov["pinned"] is True and len(prov["rows_sha256"]) == 64
    assert "0a1b2c3d" in (tmp_path / "data/prepared/data_card.md").read_text()
    assert "not pinned" not in caplog.text


def test_unpinned_hub_source_warns_and_is_flagged(tmp_path, hub, caplog):
    cfg = make_cfg(tmp_path, SOURCE % "")
    with caplog.at_level(logging.WARNING):
        prepare.run(cfg)
    assert hub == [{"path": "GAIR/LIMR", "revision": None}]
    assert "GAIR/LIMR is not pinned" in caplog.text
    card = json.loads((tmp_path / "data/prepared/data_card.json").read_text())
    assert card["rl"]["provenance"]["limr"]["pinned"] is False
    assert "**unpinned**" in (tmp_path / "data/prepared/data_card.md").read_text()
