#!/usr/bin/env bash
# Distributed training on one node: bash tools/dist_train.sh CONFIG NUM_PROCS [train.py args...]
# One process per GPU; on a machine without CUDA, CPU processes over gloo. PORT, PYTHON overridable.
set -euo pipefail
CONFIG=$1
NPROC=$2
shift 2
PYTHON=${PYTHON:-$(dirname "$0")/../.venv/bin/python}
[[ -x "$PYTHON" ]] || PYTHON=python
exec "$PYTHON" -m torch.distributed.run --nnodes=1 --nproc_per_node="$NPROC" --master_port="${PORT:-29500}" \
    "$(dirname "$0")/train.py" "$CONFIG" --launcher pytorch "$@"
