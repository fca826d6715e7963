#!/bin/sh
# Build and tag the images from the repository root; one failure does not stop the others:
#   docker/build.sh                       # all: ghcr.io/bridgerl/bridgerl-{cpu,gpu,mlflow}:<version>
#   docker/build.sh cpu mlflow            # the named images only
#   REGISTRY=registry.example.com/ml PUSH=1 docker/build.sh   # tag for your registry and push
#   docker/build.sh cpu -- --network host --build-arg WHEELS=http://127.0.0.1:8080/   # after --: to `docker build`
# Build arguments from the environment when set: PYTHON_IMAGE (base image), PIP_INDEX_URL (a mirror),
# TORCH_INDEX_URL (the CPU torch index), WHEELS (a find-links folder in the build context or a URL).
# BUILDER=podman uses another engine with the same command line. Exit status 1 when any image failed.
set -eu
cd "$(dirname "$0")/.."
REGISTRY="${REGISTRY:-ghcr.io/bridgerl}"
VERSION="${VERSION:-$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)}"
GIT_COMMIT="${GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
BUILDER="${BUILDER:-docker}"
ALL="cpu gpu mlflow"

images=""
while [ $# -gt 0 ]; do
  case "$1" in
    --) shift; break ;;
    cpu|gpu|mlflow) images="$images $1"; shift ;;
    *) echo "docker/build.sh: unknown image '$1' (choose from: $ALL; options for docker build go after --)" >&2
       exit 2 ;;
  esac
done
images="${images:-$ALL}"

built="" failed=""
for name in $images; do
  tag="$REGISTRY/bridgerl-$name:$VERSION"
  echo "== building $tag (docker/$name.Dockerfile)"
  # shellcheck disable=SC2086  # the optional build arguments are meant to split into words
  if "$BUILDER" build --file "docker/$name.Dockerfile" --tag "$tag" \
       --build-arg VERSION="$VERSION" --build-arg GIT_COMMIT="$GIT_COMMIT" \
       ${PYTHON_IMAGE:+--build-arg PYTHON_IMAGE="$PYTHON_IMAGE"} \
       ${PIP_INDEX_URL:+--build-arg PIP_INDEX_URL="$PIP_INDEX_URL"} \
       ${TORCH_INDEX_URL:+--build-arg TORCH_INDEX_URL="$TORCH_INDEX_URL"} \
       ${WHEELS:+--build-arg WHEELS="$WHEELS"} \
       "$@" . \
     && { [ "${PUSH:-0}" != 1 ] || "$BUILDER" push "$tag"; }; then
    built="$built $tag"
  else
    failed="$failed $tag"
    echo "== FAILED: $tag" >&2
  fi
done
echo "built:${built:- none}"
if [ -n "$failed" ]; then
  echo "failed:$failed" >&2
  exit 1
fi
