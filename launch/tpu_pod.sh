#!/usr/bin/env bash
# Cloud TPU pod slice: create the TPU VMs, install this repository on every worker, start
# training on all workers at once, follow the logs, delete the slice.
#
#   TPU_NAME=ba-v5p ZONE=us-east5-a ACCELERATOR_TYPE=v5p-128 launch/tpu_pod.sh create
#   TPU_NAME=ba-v5p ZONE=us-east5-a launch/tpu_pod.sh install
#   TPU_NAME=ba-v5p ZONE=us-east5-a CONFIG=configs/baichuan_audio_7b.py WORKDIR=/mnt/runs/7b \
#       launch/tpu_pod.sh run [--config.k=v ...]
#   TPU_NAME=ba-v5p ZONE=us-east5-a launch/tpu_pod.sh logs      # tail worker 0 (WORKER=all: every worker)
#   TPU_NAME=ba-v5p ZONE=us-east5-a launch/tpu_pod.sh delete
#
# Reads:   TPU_NAME, ZONE, PROJECT (gcloud default if unset), ACCELERATOR_TYPE (v5p-128),
#          RUNTIME_VERSION (v2-alpha-tpuv5), SPOT (1: preemptible capacity), CONFIG, WORKDIR,
#          REMOTE_DIR (baichuan_audio_jax, relative to the home directory), WORKER (0, for logs),
#          MAX_RESTARTS (100). WORKDIR is a gs://bucket/path (written directly) or a directory all
#          workers mount (Filestore/NFS, gcsfuse).
# Sets on every worker: PYTHONUNBUFFERED=1; jax.distributed finds the slice's workers by
#          itself (TPU_WORKER_HOSTNAMES / TPU_WORKER_ID of the TPU VM runtime).
# Output:  $REMOTE_DIR/train.log on each worker; metrics, TensorBoard and checkpoints in $WORKDIR.
# Preemption: `train` turns SIGTERM (and the TPU maintenance-event notice) into "finish the step,
#          save a checkpoint at it on every worker, exit 143". `run` restarts the command on each
#          worker after a 143 exit (up to MAX_RESTARTS times, default 100), so a maintenance event
#          that keeps the VMs costs one restore. Spot/queued capacity that deletes the VMs: create
#          the slice again (or let the queued resource do it), `install`, and `run` with the same
#          WORKDIR; it resumes from the latest checkpoint. Exit 3 (diverged) or 2 (bad config or
#          input) is not restarted.
set -euo pipefail
cd "$(dirname "$0")/.."

: "${TPU_NAME:?set TPU_NAME}"
: "${ZONE:?set ZONE}"
ACCELERATOR_TYPE=${ACCELERATOR_TYPE:-v5p-128}
RUNTIME_VERSION=${RUNTIME_VERSION:-v2-alpha-tpuv5}
REMOTE_DIR=${REMOTE_DIR:-baichuan_audio_jax}
WORKER=${WORKER:-0}
GCLOUD=(gcloud compute tpus tpu-vm)
COMMON=(--zone "$ZONE")
if [[ -n "${PROJECT:-}" ]]; then COMMON+=(--project "$PROJECT"); fi

on_workers() {  # on_workers WORKER COMMAND
  "${GCLOUD[@]}" ssh "$TPU_NAME" "${COMMON[@]}" --worker="$1" --command="$2"
}

cmd=${1:-}
shift || true
case "$cmd" in
  create)
    extra=()
    if [[ "${SPOT:-0}" == 1 ]]; then extra+=(--spot); fi
    "${GCLOUD[@]}" create "$TPU_NAME" "${COMMON[@]}" --accelerator-type="$ACCELERATOR_TYPE" \
      --version="$RUNTIME_VERSION" "${extra[@]}"
    ;;
  install)
    archive=$(mktemp -t baichuan_audio_jax.XXXXXX.tar.gz)
    git archive --format=tar.gz -o "$archive" HEAD
    "${GCLOUD[@]}" scp "$archive" "$TPU_NAME:baichuan_audio_jax.tar.gz" "${COMMON[@]}" --worker=all
    rm -f "$archive"
    on_workers all "mkdir -p $REMOTE_DIR && tar -xzf baichuan_audio_jax.tar.gz -C $REMOTE_DIR && cd $REMOTE_DIR \
      && python3 -m venv .venv && .venv/bin/pip install --quiet --upgrade pip \
      && .venv/bin/pip install --quiet -e '.[tpu]' && .venv/bin/python -c 'import jax; print(jax.device_count())'"
    ;;
  run)
    : "${CONFIG:?set CONFIG=configs/....py}"
    : "${WORKDIR:?set WORKDIR to a directory every worker mounts (Filestore/NFS, gcsfuse)}"
    args=$(printf ' %q' "$@")
    restarts=${MAX_RESTARTS:-100}
    loop="for i in \$(seq 0 $restarts); do .venv/bin/python -m baichuan_audio_jax train --no-progress \
      --config $CONFIG --workdir $WORKDIR$args; rc=\$?; [ \$rc -eq 143 ] || break; \
      echo \"preempted (143): restarting from the checkpoint\"; sleep 10; done"
    on_workers all "cd $REMOTE_DIR && PYTHONUNBUFFERED=1 nohup bash -c '$loop' >> train.log 2>&1 &"
    echo "started on all workers of $TPU_NAME; follow with: TPU_NAME=$TPU_NAME ZONE=$ZONE $0 logs"
    ;;
  logs)
    on_workers "$WORKER" "tail -n 100 -F $REMOTE_DIR/train.log"
    ;;
  stop)
    # SIGINT: every worker saves a checkpoint at an agreed step and exits 143; the restart loop is
    # stopped first so it does not start the run again.
    on_workers all "pkill -f 'for i in .*baichuan_audio_jax train' || true; pkill -INT -f 'baichuan_audio_jax train' || true"
    ;;
  delete)
    "${GCLOUD[@]}" delete "$TPU_NAME" "${COMMON[@]}" --quiet
    ;;
  *)
    echo "usage: $0 create|install|run|logs|stop|delete (see the header of this script)" >&2
    exit 2
    ;;
esac
