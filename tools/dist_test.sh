#!/usr/bin/env bash
# Distributed evaluation on one node: bash tools/dist_test.sh CONFIG CHECKPOINT NUM_PROCS [test.py args...]
set -euo pipefail
CONFIG=$1
CHECKPOINT=$2
NPROC=$3
shift 3
PYTHON=${PYTHON:-$(dirname "$0")/../.venv/bin/python}
[[ -x "$PYTHON" ]] || PYTHON=python
exec "$PYTHON" -m torch.distributed.run --nnodes=1 --nproc_per_node="$NPROC" --master_port="${PORT:-29500}" \
    "$(dirname "$0")/test.py" "$CONFIG" "$CHECKPOINT" --launcher pytorch "$@"
