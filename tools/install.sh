#!/usr/bin/env bash
# Install the pinned OpenMMLab stack + this package into .venv, unattended and idempotently.
#
#   bash tools/install.sh          (what `make install` runs)
#
# Environment knobs:
#   PYTHON=python3.11       interpreter used to create .venv (default: python3)
#   VENV=.venv              where the virtual environment lives
#   CONVNEXT_CACHE=DIR      wheel cache (default ~/.cache/convnext_backbone)
#   FORCE_CUDA=1            build mmcv's CUDA ops (needs nvcc matching torch's CUDA); default: CPU ops,
#                           or CUDA ops automatically when torch sees a GPU.
#   MAX_JOBS=N              parallel compile jobs for mmcv (default: number of cores)
#
# mmcv 2.1.0 (the newest mmcv that mmdet 3.3 / mmseg 1.2 accept) ships no wheels for current torch, so
# we compile it. Its setup.py hard-codes -std=c++17, which torch >= 2.14 headers reject, so the flag is
# raised to C++20 before building. The wheel is cached under a key of mmcv + torch + python + ops flavour,
# because a wheel built against another torch fails at import with undefined symbols (pip's own wheel
# cache does not know that, which is why we keep our own).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
CACHE=${CONVNEXT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/convnext_backbone}
CONSTRAINTS=requirements/constraints.txt
# One install at a time per venv (two `make test` runs started together would both install into it).
mkdir -p "$(dirname "$VENV")"
exec 9>"$VENV.lock"
flock 9
say() { printf '[install] %s\n' "$*"; }
pin() { sed -n "s/^$1==\([^ ]*\).*/\1/p" "$CONSTRAINTS"; }

# Everything that decides what gets installed; if none of it changed since the last success, stop here.
STAMP_INPUTS=$(cat "$CONSTRAINTS" setup.py tools/install.sh requirements/*.txt | sha256sum | cut -c1-16)
STAMP="$VENV/.convnext_backbone-installed"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$STAMP_INPUTS" && -x "$VENV/bin/python" ]]; then
    say "up to date ($VENV matches $CONSTRAINTS); nothing to do"
    exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    say "creating $VENV with $($PYTHON --version 2>&1)"
    "$PYTHON" -m venv "$VENV"
fi
PY="$ROOT/$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)
export PIP_CONSTRAINT="$ROOT/$CONSTRAINTS"

say "build tools (pip, setuptools<81 for mmcv's pkg_resources, wheel, ninja)"
"${PIP[@]}" install -q --upgrade pip setuptools wheel ninja

say "torch $(pin torch) + torchvision $(pin torchvision) first (mmcv compiles against it; large download on a cold cache)"
"${PIP[@]}" install -q torch torchvision

TORCH_VERSION=$("$PY" -c 'import torch; print(torch.__version__)')
PY_TAG=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
if [[ "${FORCE_CUDA:-0}" == "1" ]] || "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    OPS=cuda$("$PY" -c 'import torch; print(torch.version.cuda)'); export FORCE_CUDA=1
else
    OPS=cpu
fi
MMCV_VERSION=$(pin mmcv)
KEY="mmcv-${MMCV_VERSION}_torch-${TORCH_VERSION}_${PY_TAG}_${OPS}"
WHEEL_DIR="$CACHE/wheels/$KEY"

if ! ls "$WHEEL_DIR"/mmcv-*.whl >/dev/null 2>&1; then
    say "no cached mmcv wheel for $KEY"
    say "building mmcv $MMCV_VERSION with ops ($OPS) from source: this takes ~15 minutes on 2 cores"
    BUILD=$(mktemp -d)
    trap 'rm -rf "$BUILD"' EXIT
    # The sdist's metadata step imports torch, so fetch it from inside the venv without isolation.
    "${PIP[@]}" download -q --no-deps --no-binary :all: --no-build-isolation "mmcv==$MMCV_VERSION" -d "$BUILD"
    tar -xzf "$BUILD"/mmcv-"$MMCV_VERSION".tar.gz -C "$BUILD"
    SRC="$BUILD/mmcv-$MMCV_VERSION"
    # torch >= 2.14 headers need C++20; mmcv hard-codes C++17.
    sed -i 's/-std=c++14/-std=c++20/g; s/-std=c++17/-std=c++20/g' "$SRC/setup.py"
    grep -q 'c++20' "$SRC/setup.py" || { say "could not raise the C++ standard in mmcv's setup.py"; exit 1; }
    mkdir -p "$BUILD/out"
    MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} \
        "${PIP[@]}" wheel --no-deps --no-build-isolation -w "$BUILD/out" "$SRC"
    mkdir -p "$WHEEL_DIR"
    mv "$BUILD"/out/mmcv-*.whl "$WHEEL_DIR"/
    say "cached $(ls "$WHEEL_DIR")"
else
    say "using cached mmcv wheel $(ls "$WHEEL_DIR")"
fi
"${PIP[@]}" install -q "$WHEEL_DIR"/mmcv-*.whl

say "the rest of the pinned stack and convnext_backbone (editable, all extras and the test extras)"
"${PIP[@]}" install -q -e ".[all,tests]"

# mmpretrain is the tests' reference for its ConvNeXt, and only theirs: it goes into its own folder, which
# tests/conftest.py puts on sys.path. Installed into the venv, every process would see it, and mmdet imports it
# when present (ReID preprocessor), which fails with transformers 5 (mmpretrain's BLIP). --no-deps: its
# requirements would move the pins above.
say "mmpretrain $(pin mmpretrain) for the tests, into $VENV/test-extras (seen by the tests only), without its dependencies"
"${PIP[@]}" install -q --no-deps --upgrade --target "$VENV/test-extras" "mmpretrain==$(pin mmpretrain)"

say "checking the stack imports"
"$PY" - <<'PY'
import torch, torchvision, mmcv, mmengine, mmdet, mmseg, timm, numpy
from mmcv.ops import RoIAlign, nms  # noqa: F401  (compiled ops load)
import convnext_backbone
import onnx, onnxruntime, onnxscript, transformers, xdist  # noqa: F401,E401  (test extras)
from mmdet.models import MaskRCNN  # noqa: F401  (mmdet's models import without mmpretrain in sight)
import os, sys  # noqa: E401
sys.path.insert(0, os.path.join(sys.prefix, 'test-extras'))
import mmpretrain.utils.dependency  # noqa: E402
print(f"[install] ok: torch {torch.__version__}, torchvision {torchvision.__version__}, mmcv {mmcv.__version__}, "
      f"mmengine {mmengine.__version__}, mmdet {mmdet.__version__}, mmseg {mmseg.__version__}, "
      f"timm {timm.__version__}, numpy {numpy.__version__}")
PY
echo "$STAMP_INPUTS" > "$STAMP"
