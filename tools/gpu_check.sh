#!/usr/bin/env bash
# The one-call device run on a bare GPU machine that has python3 + torch + timm (+ numpy, pyyaml, rich, packaging,
# ...) and no network: the CUDA tests (tests/test_cuda_paths.py -k on_cuda), then `tools/benchmark.py check`.
#
#   bash tools/gpu_check.sh prepare            # HERE (PyPI reachable): wheels to carry into .whl/
#   bash tools/gpu_check.sh run [ARGS...]      # THERE: install .whl/ into a fresh folder, run tests and check
#   bash tools/gpu_check.sh run --device cpu --smoke     # the same path on a CPU machine (the tests skip)
#
# ARGS go to `tools/benchmark.py check` (--device, --smoke, --sections, --time-limit). Where $OUT is set (the
# device machine's folder that comes back) the results go there, else to work_dirs/: cuda_tests.txt (pytest's
# report), benchmark_check.json and benchmark_check.md (the tables).
#
# What is carried, each wheel's Requires-Dist less what the machine already has (pure Python):
#   mmengine 0.10.7            addict, yapf (-> platformdirs; tomli only before Python 3.11), termcolor;
#                              (matplotlib, numpy, pyyaml, rich, opencv are there)
#   pytest 8.3.5               iniconfig, pluggy (packaging is there)
#   convnext_backbone          this package (pip wheel --no-deps .): the run uses the installed package
#                              (run refuses a wheel whose code differs from the checkout's: prepare again
#                              after every change); tests and configs are read from this checkout
# Not carried: mmcv (its ops must be compiled against the machine's torch and CUDA: longer than the budget), so
# mmseg / mmdet models cannot import and the check's whole-model rows say they are skipped, and why.
#
# Environment: PYTHON (default python3), WHL (default .whl in the checkout), TARGET (default /tmp/site, emptied
# first), CUDA_TESTS_TIMEOUT (seconds, default 120) and GPU_CHECK_TIMEOUT (default 420): together under the device
# tool's 600 s per command.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
WHL=${WHL:-$ROOT/.whl}
TARGET=${TARGET:-/tmp/site}
say() { printf '[gpu_check.sh] %s\n' "$*" >&2; }

WHEELS=(
    mmengine==0.10.7 addict==2.4.0 yapf==0.43.0 platformdirs==4.14.9 termcolor==3.3.0
    pytest==8.3.5 iniconfig==2.1.0 pluggy==1.6.0
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
    # --noconftest: the suite's conftest.py wants the test extras (mmpretrain), which are not carried.
    # No plugin autoload: the machine's own pytest plugins are for its pytest, not the carried one (its
    # pytest-timeout registered a "float" ini option pytest 8.3 refuses, and the run stopped before any test)
    PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 timeout -k 10 "${CUDA_TESTS_TIMEOUT:-120}" $PYTHON -m pytest --noconftest -p no:cacheprovider -q -rs \
        -k on_cuda tests/test_cuda_paths.py 2>&1 | tee "$out_dir/cuda_tests.txt"
    local tests=${PIPESTATUS[0]}
    timeout -k 10 "${GPU_CHECK_TIMEOUT:-420}" $PYTHON tools/benchmark.py check \
        --out "$out_dir/benchmark_check.json" "$@"
    local check=$?
    set -e
    [ "$tests" = 124 ] && say "the CUDA tests stopped after ${CUDA_TESTS_TIMEOUT:-120} s (CUDA_TESTS_TIMEOUT)"
    [ "$check" = 124 ] && say "the check stopped after ${GPU_CHECK_TIMEOUT:-420} s (GPU_CHECK_TIMEOUT)"
    say "CUDA tests: exit $tests (pytest), check: exit $check"
    [ "$tests" = 0 ] && [ "$check" = 0 ]
}

case "${1:-}" in
    prepare) shift; prepare "$@" ;;
    run) shift; run "$@" ;;
    *) echo "usage: bash tools/gpu_check.sh prepare | run [tools/benchmark.py check args]" >&2; exit 2 ;;
esac
