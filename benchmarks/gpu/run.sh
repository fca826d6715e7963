#!/usr/bin/env bash
# GPU numbers (issue 25), one entry point: installs the carried wheels (.whl/, from fetch_wheels.sh) into a
# temporary site directory, runs bench.py (exactness, then Qwen2.5-0.5B/3B-shaped Trainer runs) writing
# results.json, and renders gpu.md from it, both into --out DIR (default: $OUT, the device machine's folder).
#   bash benchmarks/gpu/run.sh [--out DIR] [--budget-s 360] [--sizes 3b,0.5b] [--rounds 1]
#   bash benchmarks/gpu/run.sh --tiny --out DIR    # CPU, tiny shapes, no wheels installed (tests/test_gpu_bench.py)
# Exit status: bench.py's (1: a section failed or an exactness check missed its tolerance); gpu.md is rendered either way.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
py=${PYTHON:-python3}
out=${OUT:-}
tiny=0
args=()
while (($#)); do
  case $1 in
    --out) out=$2; shift 2 ;;
    --out=*) out=${1#--out=}; shift ;;
    --tiny) tiny=1; args+=("$1"); shift ;;
    *) args+=("$1"); shift ;;
  esac
done
if [[ -z $out ]]; then
  echo "run.sh: give --out DIR (or set OUT)" >&2
  exit 2
fi
mkdir -p "$out"
export PYTHONPATH="$repo/src${PYTHONPATH:+:$PYTHONPATH}"
if ((tiny == 0)); then
  shopt -s nullglob
  wheels=("$repo"/.whl/*.whl)
  if ((${#wheels[@]})); then
    site=$(mktemp -d "${TMPDIR:-/tmp}/bridgerl-gpu-site.XXXXXX")
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "${wheels[@]}" \
      || { echo "run.sh: installing the carried wheels failed" >&2; exit 2; }
    export PYTHONPATH="$site:$PYTHONPATH"
  else
    echo "run.sh: no wheels in $repo/.whl (bash benchmarks/gpu/fetch_wheels.sh); using the installed packages" >&2
  fi
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false MLFLOW_DISABLE_TELEMETRY=true
export BRIDGERL_COMMIT=${BRIDGERL_COMMIT:-$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || true)}
"$py" "$here/bench.py" --out "$out" "${args[@]}"
rc=$?
if ! "$py" "$here/render.py" "$out/results.json" "$out/gpu.md"; then
  ((rc == 0)) && rc=1
fi
exit "$rc"
