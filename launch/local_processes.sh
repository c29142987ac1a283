#!/usr/bin/env bash
# Run N processes of one job on this machine over loopback, each with its own CPU devices:
# a test bed for the multi-host code paths without a cluster.
#
#   launch/local_processes.sh N --config=configs/toy.py:smoke --workdir=runs/smoke_2proc
#
# Arguments after N go to `python -m bdbounds.main` on every process, run in the repository
# root (relative paths are taken from there). Environment:
#   DEVICES_PER_PROCESS  fake CPU devices per process (default 1)
#   COORDINATOR_PORT     loopback port of process 0's coordinator (default: a free one)
#   LOG_DIR              where processes 1..N-1 write process_<i>.log (default: a new temp dir)
#   PYTHON               the interpreter (default: python)
# Process 0 prints to the terminal. If a process fails, the others are stopped, the end of its
# log is shown, and its exit status is returned.
set -euo pipefail
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2; exit 2; }
[[ $# -ge 1 && "$1" =~ ^[1-9][0-9]*$ ]] || usage
num_processes=$1
shift
cd "$(dirname "$0")/.."
python=${PYTHON:-python}
free_port='import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
port=${COORDINATOR_PORT:-$("$python" -c "$free_port")}
log_dir=${LOG_DIR:-$(mktemp -d)}
mkdir -p "$log_dir"
[[ $num_processes -gt 1 ]] && echo "processes 1..$((num_processes - 1)) log to $log_dir" >&2

pids=()
stop_all() { for pid in "${pids[@]}"; do [[ -n "$pid" ]] && kill "$pid" 2>/dev/null; done; return 0; }
trap 'stop_all; exit 130' INT TERM

for ((i = 0; i < num_processes; i++)); do
  (
    export JAX_PLATFORMS=cpu JAX_COORDINATOR_ADDRESS="127.0.0.1:$port"
    export JAX_NUM_PROCESSES="$num_processes" JAX_PROCESS_ID="$i"
    export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${DEVICES_PER_PROCESS:-1}"
    if [[ $i -eq 0 ]]; then
      exec "$python" -m bdbounds.main "$@"
    else
      exec "$python" -m bdbounds.main "$@" >"$log_dir/process_$i.log" 2>&1
    fi
  ) &
  pids+=($!)
done

# A process that dies leaves the others waiting for it in a collective: stop them at once.
running=$num_processes
while [[ $running -gt 0 ]]; do
  for i in "${!pids[@]}"; do
    pid=${pids[$i]}
    [[ -z "$pid" ]] || kill -0 "$pid" 2>/dev/null && continue
    status=0
    wait "$pid" || status=$?
    pids[$i]=""
    running=$((running - 1))
    if [[ $status -ne 0 ]]; then
      stop_all
      echo "process $i failed (exit status $status); the others were stopped." >&2
      [[ $i -gt 0 ]] && tail -n 30 "$log_dir/process_$i.log" >&2
      exit "$status"
    fi
  done
  sleep 1
done
