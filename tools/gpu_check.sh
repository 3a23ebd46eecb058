#!/usr/bin/env bash
# tools/gpu_check.py on a bare GPU machine that has python3 + torch + timm (+ torchvision, onnx, onnxruntime,
# numpy, opencv-python-headless, matplotlib, scipy, pyyaml, rich, regex, packaging, pillow) and no network.
#
#   bash tools/gpu_check.sh prepare            # HERE (PyPI reachable): wheels to carry into .whl/
#   bash tools/gpu_check.sh run [ARGS...]      # THERE: install .whl/ into a fresh folder, run the check
#   bash tools/gpu_check.sh run --device cpu --smoke     # the same path on a CPU machine
#
# ARGS go to tools/gpu_check.py (--device, --smoke, --sections, --time-limit, --out). Where $OUT is set (the
# device machine's folder that comes back), the JSON goes to $OUT/gpu_check.json and the tables to
# $OUT/gpu_check.md; else to work_dirs/.
#
# What is carried (4.7 MiB; pure Python except wcwidth, abi3 manylinux x86_64), each wheel's Requires-Dist less what
# the machine already has:
#   mmengine 0.10.7            addict, yapf (-> platformdirs; tomli only before Python 3.11), termcolor;
#                              (matplotlib, numpy, pyyaml, rich, opencv are there)
#   mmcv-lite 2.1.0            mmcv without compiled ops (mmcv 2.1.0 must be compiled against the machine's
#                              torch and CUDA: minutes beyond the budget). gpu_check registers a placeholder
#                              mmcv._ext so that mmseg imports; Mask R-CNN needs the ops and is skipped
#   mmsegmentation 1.2.2       prettytable (-> wcwidth), and ftfy (-> wcwidth) + regex that it imports
#                              without declaring them; (matplotlib, numpy, packaging, scipy are there)
#   convnext_backbone          this package (pip wheel --no-deps .): the check runs the installed package
#                              (run refuses a wheel whose code differs from the checkout's: prepare again
#                              after every change); the configs are read from this checkout
# mmdet is not carried: without mmcv's ops its models do not run, and its Mask R-CNN row is skipped anyway.
#
# Environment: PYTHON (default python3), WHL (default .whl in the checkout), TARGET (default /tmp/site, emptied
# first), GPU_CHECK_TIMEOUT (seconds, default 560: the device tool's per-command limit is 600).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
WHL=${WHL:-$ROOT/.whl}
TARGET=${TARGET:-/tmp/site}
say() { printf '[gpu_check.sh] %s\n' "$*" >&2; }

WHEELS=(
    mmengine==0.10.7 addict==2.4.0 yapf==0.43.0 platformdirs==4.14.9 termcolor==3.3.0
    mmcv-lite==2.1.0
    mmsegmentation==1.2.2 prettytable==3.19.0 wcwidth==0.9.4 ftfy==6.3.1
)

prepare() {
    rm -rf "$WHL"
    mkdir -p "$WHL"
    say "downloading ${#WHEELS[@]} wheels for CPython 3.12 manylinux x86_64 into $WHL"
    $PYTHON -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$WHL" "${WHEELS[@]}"
    say "building this package's wheel"
    $PYTHON -m pip wheel -q --no-deps -w "$WHL" "$ROOT"
    rm -rf "$ROOT"/build "$ROOT"/*.egg-info
    ls -l "$WHL" >&2
    say "total: $(du -sh "$WHL" | cut -f1) (carry it: run(carry=['.whl'], ...), see docs/gpu.md)"
}

run() {
    if ! ls "$WHL"/*.whl >/dev/null 2>&1; then
        say "no wheels in $WHL: run 'bash tools/gpu_check.sh prepare' first (where PyPI is reachable), carry .whl"
        exit 2
    fi
    rm -rf "$TARGET"
    PIP_ROOT_USER_ACTION=ignore $PYTHON -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --target "$TARGET" "$WHL"/*.whl
    # the carried wheel of this package must be the checkout's code (prepare again after every change)
    if ! diff -rq -x __pycache__ "$ROOT/convnext_backbone" "$TARGET/convnext_backbone" >&2; then
        say "the carried convnext_backbone wheel differs from this checkout: 'bash tools/gpu_check.sh prepare' again"
        exit 3
    fi
    export PYTHONPATH="$TARGET${PYTHONPATH:+:$PYTHONPATH}" PYTHONNOUSERSITE=1 PYTHONUNBUFFERED=1
    local out_dir=${OUT:-$ROOT/work_dirs}
    mkdir -p "$out_dir"
    cd "$ROOT"
    say "installed into $TARGET; python: $($PYTHON -c 'import sys, torch
print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available())')"
    set +e
    timeout -k 10 "${GPU_CHECK_TIMEOUT:-560}" $PYTHON tools/gpu_check.py --out "$out_dir/gpu_check.json" "$@" \
        | tee "$out_dir/gpu_check.md"
    local status=${PIPESTATUS[0]}
    set -e
    [ "$status" = 124 ] && say "stopped after ${GPU_CHECK_TIMEOUT:-560} s (GPU_CHECK_TIMEOUT)"
    return "$status"
}

case "${1:-}" in
    prepare) shift; prepare "$@" ;;
    run) shift; run "$@" ;;
    *) echo "usage: bash tools/gpu_check.sh prepare | run [tools/gpu_check.py args]" >&2; exit 2 ;;
esac
