#!/usr/bin/env bash
# Training under Slurm: bash tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [train.py args...]
# GPUS (total, default 8), GPUS_PER_NODE (8), CPUS_PER_TASK (5), SRUN_ARGS are read from the environment.
#
# Preemption: train.py checkpoints and exits with status 75 on SIGTERM / SIGUSR1. Inside a batch job
# (sbatch --requeue --signal=USR1@90 ..., see docs/crash_safety.md) this script then runs
# `scontrol requeue $SLURM_JOB_ID`; the requeued job (SLURM_RESTART_COUNT > 0) resumes by itself (--resume).
set -euo pipefail
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
WORK_DIR=$4
shift 4
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
PYTHON=${PYTHON:-python}
PREEMPTED=75  # convnext_backbone.crash_safe.PREEMPTED_EXIT_STATUS
ARGS=("$@")
if [[ "${SLURM_RESTART_COUNT:-0}" -gt 0 ]]; then
    ARGS+=(--resume)  # a requeued job: continue from the latest intact checkpoint in WORK_DIR
fi
status=0
srun -p "$PARTITION" --job-name="$JOB_NAME" --gres=gpu:"$GPUS_PER_NODE" --ntasks="$GPUS" \
    --ntasks-per-node="$GPUS_PER_NODE" --cpus-per-task="$CPUS_PER_TASK" --kill-on-bad-exit=1 ${SRUN_ARGS:-} \
    "$PYTHON" -u "$(dirname "$0")/train.py" "$CONFIG" --work-dir="$WORK_DIR" --launcher slurm "${ARGS[@]}" \
    || status=$?
if [[ $status -eq $PREEMPTED ]]; then
    if [[ -n "${SLURM_JOB_ID:-}" ]]; then
        echo "slurm_train.sh: preempted, checkpoint saved; requeueing job $SLURM_JOB_ID" >&2
        scontrol requeue "$SLURM_JOB_ID"
    else
        echo "slurm_train.sh: preempted, checkpoint saved; not in a batch job, so not requeued:" \
             "run again with --resume" >&2
    fi
fi
exit $status
