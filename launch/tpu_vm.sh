#!/usr/bin/env bash
# Train on a Cloud TPU VM or pod slice: the same command on every worker, over gcloud ssh.
#
#   launch/tpu_vm.sh TPU_NAME ZONE --config=configs/toy.py --workdir=/mnt/shared/runs/toy
#
# Arguments after ZONE go to `python -m bdbounds.main` on every worker. Each worker needs
# the repository checked out and installed at REPO_DIR (default: bdbounds, in the remote home),
# with a virtual environment in REPO_DIR/.venv if it has one. parallel.initialize_distributed()
# recognises the TPU VM and JAX finds the other workers itself. --workdir must be visible to
# every worker (a shared file system or a mounted bucket). The run stops if the ssh session
# ends: start it from a machine that stays up, or inside tmux.
set -euo pipefail
if [[ $# -lt 2 ]]; then
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2
  exit 2
fi
tpu_name=$1
zone=$2
shift 2
repo_dir=$(printf '%q' "${REPO_DIR:-bdbounds}")
main_args=""
[[ $# -gt 0 ]] && main_args=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$tpu_name" --zone="$zone" --worker=all --command="
  set -e; cd $repo_dir
  if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi
  python -m bdbounds.main$main_args"
