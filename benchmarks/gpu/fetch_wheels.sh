#!/usr/bin/env bash
# Download the wheels of benchmarks/gpu/wheels.txt into .whl/ at the repo root (git-ignored), for the GPU
# machine's Python 3.12 on x86-64 (the platform flags of the device README), without their dependencies
# (each one needed is listed). Run once here before the device call that carries ".whl".
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
dest="$repo/.whl"
mkdir -p "$dest"
mapfile -t pins < <(grep -v '^\s*#' "$here/wheels.txt" | grep -v '^\s*$')
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$dest" "${pins[@]}"
# one version of each package only (two stop the device's install)
names=$(ls "$dest"/*.whl | xargs -n1 basename | cut -d- -f1 | tr 'A-Z-' 'a-z_' | sort)
dups=$(uniq -d <<<"$names")
if [[ -n $dups ]]; then
  echo "fetch_wheels.sh: several versions in $dest of: $dups (remove the stale ones)" >&2
  exit 1
fi
du -sh "$dest"
