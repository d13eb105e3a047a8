#!/usr/bin/env bash
# Run `baichuan-audio train` as several JAX processes on this machine (multi-host rehearsal on
# CPU, or one process per GPU).
#
#   NUM_PROCESSES=2 DEVICES_PER_PROCESS=2 launch/local_multiprocess.sh \
#       --config configs/tiny.py --workdir runs/local [--config.k=v ...]
#
# Reads:   NUM_PROCESSES (2), DEVICES_PER_PROCESS (2, fake CPU devices per process),
#          PLATFORM (cpu; `gpu` gives process i the GPU i via CUDA_VISIBLE_DEVICES),
#          PORT (a free port on 127.0.0.1 by default), PYTHON (.venv/bin/python or python3),
#          LOG_DIR (runs/local-logs).
# Sets for process i: BAICHUAN_COORDINATOR=127.0.0.1:$PORT, BAICHUAN_NUM_PROCESSES,
#          BAICHUAN_PROCESS_ID=i, PYTHONUNBUFFERED=1, and JAX_PLATFORMS=cpu + the device count added to
#          XLA_FLAGS (cpu) or
#          CUDA_VISIBLE_DEVICES=i (gpu).
# Output:  process i logs to $LOG_DIR/process_i.log; process 0's log is also echoed. Exit status
#          143 if the run was preempted (SIGTERM/SIGINT to the script or to any process: all stop at
#          the same step after saving a checkpoint; run the same command again to resume), 1 if any
#          process fails (the others are then stopped), else 0.
set -euo pipefail
cd "$(dirname "$0")/.."

NUM_PROCESSES=${NUM_PROCESSES:-2}
DEVICES_PER_PROCESS=${DEVICES_PER_PROCESS:-2}
PLATFORM=${PLATFORM:-cpu}
LOG_DIR=${LOG_DIR:-runs/local-logs}
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
if [[ -z "${PORT:-}" ]]; then
  PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi
if [[ $# -eq 0 ]]; then
  echo "usage: $0 --config CONFIG --workdir DIR [--config.k=v ...]" >&2
  exit 2
fi
mkdir -p "$LOG_DIR"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup INT TERM  # forwarded as SIGTERM: the processes save at an agreed step and exit 143

for ((i = 0; i < NUM_PROCESSES; i++)); do
  (
    export BAICHUAN_COORDINATOR="127.0.0.1:${PORT}" BAICHUAN_NUM_PROCESSES="$NUM_PROCESSES" BAICHUAN_PROCESS_ID="$i"
    export PYTHONUNBUFFERED=1  # the logs show each line as it is printed (`tail -f` them)
    if [[ "$PLATFORM" == cpu ]]; then
      # the caller's XLA flags are kept; the device count comes last, so it is the one that holds
      export JAX_PLATFORMS=cpu XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${DEVICES_PER_PROCESS}"
    else
      export CUDA_VISIBLE_DEVICES="$i"
    fi
    exec "$PYTHON" -m baichuan_audio_jax train --no-progress "$@"
  ) > "$LOG_DIR/process_${i}.log" 2>&1 &
  pids+=($!)
done
echo "started $NUM_PROCESSES processes (coordinator 127.0.0.1:${PORT}); logs in $LOG_DIR"

status=0
preempted=0
for i in "${!pids[@]}"; do
  while :; do  # a trapped signal interrupts `wait`: wait again until the process has exited
    rc=0
    wait "${pids[$i]}" || rc=$?
    kill -0 "${pids[$i]}" 2>/dev/null || break
  done
  if [[ $rc -eq 143 ]]; then
    preempted=1  # stopped by a preemption notice after saving a checkpoint: the others stop at the same step
  elif [[ $rc -ne 0 ]]; then
    echo "process $i failed (status $rc); see $LOG_DIR/process_${i}.log" >&2
    status=1
    cleanup
  fi
done
cat "$LOG_DIR/process_0.log"
if [[ $status -eq 0 && $preempted -eq 1 ]]; then
  echo "preempted: checkpoint saved; run the same command again to resume" >&2
  exit 143
fi
exit $status
