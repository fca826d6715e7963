#!/usr/bin/env bash
# The newest transformers that pyproject.toml's range allows (what a plain `pip install -e .` takes today),
# laid over the locked environment, and the tests that lean on its internals run against it:
#
#   bash requirements/newest-transformers.sh [pytest args...]
#
# Only transformers changes (installed without dependencies into its own folder, put first on PYTHONPATH);
# its own requirements must already hold in the locked environment, else this says which one does not.
# vLLM caps transformers lower (its CPU build included), so the vLLM tests are not among them.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${BRIDGERL_NEWEST_TRANSFORMERS:-/tmp/bridgerl-transformers-newest}
spec=$(python - <<'PY'
import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
print(next(d for d in deps if re.match(r"transformers\b", d)))
PY
)
rm -rf "$dir"
python -m pip install -q --no-deps --target "$dir" "$spec"
PYTHONPATH="$dir" python - "$spec" <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, requires, version

from packaging.requirements import Requirement

import transformers

bad = []
for r in map(Requirement, requires("transformers") or []):
    if r.marker and not r.marker.evaluate({"extra": ""}):
        continue
    try:
        have = version(r.name)
    except PackageNotFoundError:
        have = None
    if have is None or not r.specifier.contains(have, prereleases=True):
        bad.append(f"{r} (installed: {have})")
if bad:
    sys.exit(f"transformers {transformers.__version__} (newest for {sys.argv[1]!r}) needs: " + "; ".join(bad))
print(f"transformers {transformers.__version__}: the newest that {sys.argv[1]!r} allows, over requirements/dev.lock")
PY
export PYTHONPATH="$dir${PYTHONPATH:+:$PYTHONPATH}"
python -m pytest -p no:cacheprovider tests/test_scale.py tests/test_methods.py tests/test_trainer.py \
  tests/test_smoke_stages.py tests/test_init_model_dtype.py "$@"
