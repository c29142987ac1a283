#!/usr/bin/env bash
# The accelerator benchmark, prepared to finish in under 8 minutes on one GPU:
#   bash bench/gpu.sh > gpu.md
# Prints Markdown tables: images/s of the train step for every pairing at CIFAR-10 and
# CelebA-64 sizes (synthetic batches), and the toy step time of the default pairing.
set -euo pipefail
# PYTHON=/path/to/python picks the interpreter (default: python on the PATH).
cd "$(dirname "$0")/.."
"${PYTHON:-python}" -c "import jax; print('devices:', jax.devices())"
timeout 200 "${PYTHON:-python}" bench/image_step.py --config configs/cifar10.py --steps 20
timeout 200 "${PYTHON:-python}" bench/image_step.py --config configs/celeba.py --steps 10 \
  --pairs jacobian:latent_fisher jacobian:none jacobian:diffusion mutual_info:latent_fisher
timeout 60 "${PYTHON:-python}" bench/step_time.py --pairs jacobian:latent_fisher --steps 300
