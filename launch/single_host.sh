#!/usr/bin/env bash
# Train or evaluate on one host, with every local device (all GPUs, TPU chips, or the CPU).
#
#   launch/single_host.sh --config=configs/toy.py --workdir=runs/toy
#
# Arguments go to `python -m bdbounds.main` unchanged; it runs in the repository root, so
# relative paths are taken from there. Nothing to initialise: a single process
# builds its mesh from all local devices. Select devices with the usual variables, e.g.
# CUDA_VISIBLE_DEVICES=0,1, or JAX_PLATFORMS=cpu.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" -m bdbounds.main "$@"
