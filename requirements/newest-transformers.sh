#!/usr/bin/env bash
# The newest transformers that pyproject.toml's range allows and that installs next to the locked packages
# (what a plain `pip install -e .` on top of requirements/dev.lock takes today), laid over the locked
# environment, and the tests that lean on its internals run against it:
#
#   bash requirements/newest-transformers.sh [pytest args...]
#
# Only transformers changes: pip resolves the range with every other package held at its locked version
# (so a release whose own requirements are newer than the lock, or not on the index, is passed over, as pip
# would), and that version is installed without dependencies into its own folder, first on PYTHONPATH, with
# the packages it requires that the lock does not have (e.g. `kernels` from transformers 5.25 on), as pip
# would resolve them.
# vLLM caps transformers lower (its CPU build included), so the vLLM tests are not among these.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${BRIDGERL_NEWEST_TRANSFORMERS:-/tmp/bridgerl-transformers-newest}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
spec=$(python -c 'import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
print(next(d for d in deps if re.match(r"transformers\b", d)))')
grep -viE '^transformers==' requirements/dev.lock > "$work/others.txt"
python -m pip install -q --dry-run --ignore-installed --report "$work/report.json" -c "$work/others.txt" "$spec"
version=$(python -c 'import json, sys
print(next(i["metadata"]["version"] for i in json.load(open(sys.argv[1]))["install"]
           if i["metadata"]["name"].lower() == "transformers"))' "$work/report.json")
new=$(python -c 'import json, re, sys
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
locked = {norm(l.split("==")[0]) for l in open(sys.argv[2]) if "==" in l}
print(" ".join("%s==%s" % (i["metadata"]["name"], i["metadata"]["version"])
               for i in json.load(open(sys.argv[1]))["install"] if norm(i["metadata"]["name"]) not in locked))' \
  "$work/report.json" "$work/others.txt")
rm -rf "$dir"
# shellcheck disable=SC2086
python -m pip install -q --no-deps --target "$dir" $new
echo "transformers $version: the newest that '$spec' allows next to requirements/dev.lock (locked: $(grep -i '^transformers==' requirements/dev.lock)); installed beside it: $new"
export PYTHONPATH="$dir${PYTHONPATH:+:$PYTHONPATH}"
python -m pytest -p no:cacheprovider tests/test_scale.py tests/test_methods.py tests/test_trainer.py \
  tests/test_smoke_stages.py tests/test_init_model_dtype.py "$@"
