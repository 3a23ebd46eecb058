#!/usr/bin/env bash
# Install one of the tested OpenMMLab stacks + this package into its own venv, unattended and idempotently.
#
#   bash tools/install.sh                  the pinned stack into .venv (what `make install` runs)
#   STACK=classic bash tools/install.sh    torch 2.1.2 + mmcv 2.1.0 + mmdet 3.3 / mmseg 1.2 into .venv-classic
#   STACK=onedl bash tools/install.sh      torch 2.8.0 + the onedl fork (onedl-mmcv 2.3.6, ...) into .venv-onedl
#
# requirements/<STACK>.txt is each stack's single source of truth (docs/stack.md says why each pin).
#
# Environment knobs:
#   STACK=pinned|classic|onedl  which stack (default pinned)
#   PYTHON=python3.11       interpreter used to create the venv (default: python3)
#   VENV=DIR                where the virtual environment lives (default .venv, .venv-classic, .venv-onedl)
#   CONVNEXT_CACHE=DIR      wheel cache (default ~/.cache/convnext_backbone), shared by the stacks
#   FORCE_CUDA=1            build mmcv's CUDA ops (needs nvcc matching torch's CUDA); default: CPU ops,
#                           or CUDA ops automatically when torch sees a GPU.
#   MAX_JOBS=N              parallel compile jobs for mmcv (default: number of cores)
#   MIN_FREE_GB=N           free disk a new venv needs before anything is installed (default: the stack's
#                           measured peak; 0 skips the check)
#
# mmcv ships no wheels on PyPI (mmcv 2.1.0's are on OpenMMLab's own index, onedl-mmcv's on onedl's), so we
# compile it from PyPI's sdist. The wheel is cached under a key of mmcv + torch + python + ops flavour, because a
# wheel built against another torch fails at import with undefined symbols (pip's own wheel cache does not know
# that, which is why we keep our own).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
STACK=${STACK:-pinned}
case "$STACK" in
    pinned)  DEFAULT_VENV=.venv;         MMCV_DIST=mmcv ;;
    classic) DEFAULT_VENV=.venv-classic; MMCV_DIST=mmcv ;;
    onedl)   DEFAULT_VENV=.venv-onedl;   MMCV_DIST=onedl-mmcv ;;
    *) echo "[install] unknown STACK=$STACK: use pinned, classic or onedl (docs/stack.md)" >&2; exit 2 ;;
esac
PYTHON=${PYTHON:-python3}
VENV=${VENV:-$DEFAULT_VENV}
CACHE=${CONVNEXT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/convnext_backbone}
CONSTRAINTS=requirements/$STACK.txt
# One install at a time per venv (two `make test` runs started together would both install into it).
mkdir -p "$(dirname "$VENV")"
exec 9>"$VENV.lock"
flock 9
say() { printf '[install %s] %s\n' "$STACK" "$*"; }
pin() { sed -n "s/^$1==\([^ ]*\).*/\1/p" "$CONSTRAINTS"; }

# Everything that decides what gets installed; if none of it changed since the last success, stop here.
STAMP_INPUTS=$(cat "$CONSTRAINTS" setup.py tools/install.sh | sha256sum | cut -c1-16)
STAMP="$VENV/.convnext_backbone-installed"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$STAMP_INPUTS" && -x "$VENV/bin/python" ]]; then
    say "up to date ($VENV matches $CONSTRAINTS); nothing to do"
    exit 0
fi

# Room on disk for a new venv: the venv itself (5.5-7.6 GB, mostly torch's CUDA libraries, which the CPU tests do
# not use but PyPI's torch brings), plus pip's downloads and mmcv's build while installing. The thresholds are the
# peaks measured on a fresh machine + ~1 GB of margin (docs/stack.md). Too little fails here, before
# the venv is created, instead of halfway through pip with "No space left on device".
case "$STACK" in
    pinned) NEED_GB=8 ;; classic) NEED_GB=9 ;; onedl) NEED_GB=12 ;;
esac
NEED_GB=${MIN_FREE_GB:-$NEED_GB}
if [[ ! -x "$VENV/bin/python" ]]; then
    FREE_GB=$(df -Pk "$(dirname "$VENV")" | awk 'NR == 2 { print int($4 / 1048576) }')
    if (( FREE_GB < NEED_GB )); then
        say "a new $VENV needs ~$NEED_GB GB free, and $(cd "$(dirname "$VENV")" && pwd) has $FREE_GB GB: free some" \
            "space (make clean removes this checkout's venvs), or put the venv on a disk with room (VENV=/path/to/venv);" \
            "MIN_FREE_GB=0 skips this check" >&2
        exit 1
    fi
    say "creating $VENV with $($PYTHON --version 2>&1)"
    "$PYTHON" -m venv "$VENV"
fi
case "$VENV" in /*) PY="$VENV/bin/python" ;; *) PY="$ROOT/$VENV/bin/python" ;; esac
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
MMCV_VERSION=$(pin "$MMCV_DIST")
KEY="${MMCV_DIST}-${MMCV_VERSION}_torch-${TORCH_VERSION}_${PY_TAG}_${OPS}"
WHEEL_DIR="$CACHE/wheels/$KEY"

if ! ls "$WHEEL_DIR"/*.whl >/dev/null 2>&1; then
    say "no cached $MMCV_DIST wheel for $KEY"
    say "building $MMCV_DIST $MMCV_VERSION with ops ($OPS) from source: 10-15 minutes on 2 cores"
    BUILD=$(mktemp -d)
    trap 'rm -rf "$BUILD"' EXIT
    # The sdist's metadata step imports torch, so fetch it from inside the venv without isolation.
    "${PIP[@]}" download -q --no-deps --no-binary :all: --no-build-isolation "$MMCV_DIST==$MMCV_VERSION" -d "$BUILD"
    mkdir -p "$BUILD/src" "$BUILD/out"
    tar -xzf "$BUILD"/*.tar.gz -C "$BUILD/src"
    SRC=$(ls -d "$BUILD"/src/*/ | head -n 1)
    if "$PY" -c 'import sys, torch; sys.exit(0 if tuple(map(int, torch.__version__.split(".")[:2])) >= (2, 14) else 1)'; then
        # torch >= 2.14 headers need C++20; mmcv 2.1.0 hard-codes C++14 / C++17.
        sed -i 's/-std=c++14/-std=c++20/g; s/-std=c++17/-std=c++20/g' "$SRC/setup.py"
        grep -q 'c++20' "$SRC/setup.py" || { say "could not raise the C++ standard in $MMCV_DIST's setup.py"; exit 1; }
    fi
    MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} \
        "${PIP[@]}" wheel --no-deps --no-build-isolation -w "$BUILD/out" "$SRC"
    mkdir -p "$WHEEL_DIR"
    mv "$BUILD"/out/*.whl "$WHEEL_DIR"/
    say "cached $(ls "$WHEEL_DIR")"
else
    say "using cached $MMCV_DIST wheel $(ls "$WHEEL_DIR")"
fi
"${PIP[@]}" install -q "$WHEEL_DIR"/*.whl

if [[ "$STACK" == pinned ]]; then
    say "the rest of the pinned stack and convnext_backbone (editable, all extras and the test extras)"
    "${PIP[@]}" install -q -e ".[all,tests]"
    # mmpretrain is the tests' reference for its ConvNeXt, and only theirs: it goes into its own folder, which
    # tests/conftest.py puts on sys.path. Installed into the venv, every process would see it, and mmdet imports
    # it when present (ReID preprocessor), which fails with transformers 5 (mmpretrain's BLIP). --no-deps: its
    # requirements would move the pins above.
    say "mmpretrain $(pin mmpretrain) for the tests, into $VENV/test-extras (seen by the tests only), without its dependencies"
    "${PIP[@]}" install -q --no-deps --upgrade --target "$VENV/test-extras" "mmpretrain==$(pin mmpretrain)"
else
    # As a user of this stack has it: the stack first, from its own distributions, then this package with its
    # plain install_requires, which must find everything already there (tests/test_stack.py checks that pip
    # would move nothing).
    say "the rest of the $STACK stack (requirements/$STACK.txt), then convnext_backbone (editable, no extras)"
    "${PIP[@]}" install -q -r "$CONSTRAINTS"
    "${PIP[@]}" install -q -e .
fi

say "checking the stack imports"
STACK=$STACK "$PY" - <<'PY'
import os, sys  # noqa: E401
import torch, torchvision, mmcv, mmengine, mmdet, mmseg, timm, numpy  # noqa: E401
from mmcv.ops import RoIAlign, nms  # noqa: F401  (compiled ops load)
import convnext_backbone  # noqa: F401
import onnx, onnxruntime, xdist  # noqa: F401,E401  (test extras of every stack)
from mmdet.models import MaskRCNN  # noqa: F401  (mmdet's models import without mmpretrain in sight)
if os.environ['STACK'] == 'pinned':
    import onnxscript, transformers  # noqa: F401,E401
    sys.path.insert(0, os.path.join(sys.prefix, 'test-extras'))
    import mmpretrain.utils.dependency  # noqa: F401
print(f"[install {os.environ['STACK']}] ok: torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"mmcv {mmcv.__version__}, mmengine {mmengine.__version__}, mmdet {mmdet.__version__}, "
      f"mmseg {mmseg.__version__}, timm {timm.__version__}, numpy {numpy.__version__}")
PY
echo "$STAMP_INPUTS" > "$STAMP"
