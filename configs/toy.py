"""2-D toy densities. Argument: a data-set name and/or `smoke`, comma-separated.

  --config=configs/toy.py                 25 Gaussians (the original code's default problem)
  --config=configs/toy.py:rings           another data set
  --config=configs/toy.py:rings,smoke     a few steps, for tests and a first look
"""

from bdbounds.data import TOY_DATASETS as DATASETS
from configs import base


# Sharp data (modes of std 0.018) need first layers that can learn short length scales fast.
INPUT_SCALES = {"25gaussians": (5.0, 2.0)}  # (energy, generator)


def get_config(arg: str = ""):
  config = base.get_config()
  for preset in filter(None, (a.strip() for a in arg.split(","))):
    if preset in DATASETS:
      config.data.name = preset
    elif preset == "smoke":
      config.training.num_steps = 20
      config.training.batch_size = 32
      config.eval.every_steps = 10
      config.eval.num_samples = 256
      config.eval.quadrature_tol = 1e-2
      config.checkpoint.every_steps = 10
      config.log.every_steps = 5
      config.log.progress_bar = False
    else:
      raise ValueError(f"unknown preset {preset!r} in configs/toy.py; use a data set "
                       f"({', '.join(DATASETS)}) and/or 'smoke', comma-separated")
  config.model.energy_input_scale, config.model.generator_input_scale = INPUT_SCALES.get(
      config.data.name, (1.0, 1.0))
  return config.lock()
