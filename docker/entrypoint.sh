#!/bin/sh
# bridgerl image entrypoint: `healthcheck` checks the installation (and CUDA where a GPU is
# visible); a bridgerl command (prepare, train, ...) or an option runs bridgerl; anything else
# (python, torchrun, sh) runs as given. Kubeflow sets its own command and does not pass through here.
# The list of bridgerl commands below is checked against the CLI by tests/test_containers.py.
set -eu
umask 0002  # outputs group-readable and -writable: pods sharing a volume through fsGroup can resume them
case "${1:-}" in
  healthcheck)
    exec python - <<'PY'
import importlib, sys
for m in ("bridgerl.cli", "torch", "transformers", "kfp"):
    importlib.import_module(m)
import torch
if torch.cuda.device_count() and not torch.cuda.is_available():
    sys.exit("CUDA devices are visible but unusable")
print("ok", torch.__version__, "cuda" if torch.cuda.is_available() else "cpu")
PY
    ;;
  ""|-*|config|generate|resolve-config|prepare|init-model|build-demos|serve-teacher|train|evaluate|report|register|promote|rollback|compare|plan)
    exec bridgerl "$@" ;;
  *)
    exec "$@" ;;
esac
