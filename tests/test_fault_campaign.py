"""The fault campaign (tests/fault_campaign.py) as a CI test: 20 SIGKILLs across the pipeline, seeded, each at a
write of the stage's own work (so every one lands inside the stage, however fast or busy the machine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow


def test_sigkill_campaign_loses_nothing(tmp_path):
    p = subprocess.run([sys.executable, str(REPO / "tests" / "fault_campaign.py"), "--trials", "20", "--seed", "0",
                        "--keep", str(tmp_path / "campaign")], check=False, capture_output=True, text=True, timeout=900,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    result = json.loads(p.stdout.strip().splitlines()[-1])
    # [stage, at write, of writes, rc, what the write was]
    assert result["trials"] == 20 and result["interrupted"] == 20, result["kills"]
    # train's and register's first kills land while a checkpoint is saved / while MLflow registers the model
    assert result["killed_in"]["checkpoint"] >= 2 and result["killed_in"]["registration"] >= 2, result["kills"]
    assert result["failures"] == 0 and p.returncode == 0, "\n".join(result["details"])
