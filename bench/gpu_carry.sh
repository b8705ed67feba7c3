#!/usr/bin/env bash
# What a GPU machine lent through the `device` tool lacks, made here into .gpu/ (kept out of git):
# its image has python3 with torch, timm, pyarrow and pandas, but no Ray, hyperopt, tensorboardX or
# pydantic, and nothing can be fetched there. Ray's wheel (77 MB) is over the 64 MiB a call carries,
# so it goes as an xz archive without its Java jars, dashboard build and RLlib (24 MB).
#   bench/gpu_carry.sh [python-version, default 3.12]
# then: device run `bash bench/gpu_run.sh` (or `... smith`) with carry [".gpu"].
set -euo pipefail
cd "$(dirname "$0")/.."
py="${1:-3.12}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
pip="${PIP:-.venv/bin/pip}"
"$pip" download --quiet --python-version "$py" --only-binary=:all: --no-deps -d "$tmp/whl" \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  ray==2.60.0 hyperopt tensorboardX pydantic pydantic-core annotated-types typing-inspection \
  typing-extensions jsonschema jsonschema-specifications referencing rpds-py
mkdir -p .gpu/wheels "$tmp/ray"
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
(cd "$tmp/ray" && unzip -q "$tmp"/whl/ray-*.whl && rm -rf ray/jars ray/dashboard/client/build ray/rllib ray/llm \
  && tar cf - ray ray-*.dist-info | xz -9 -T0 > "$OLDPWD/.gpu/ray.tar.xz")
rm -f .gpu/wheels/*.whl "$tmp"/whl/ray-*.whl
cp "$tmp"/whl/*.whl .gpu/wheels/
du -sh .gpu
