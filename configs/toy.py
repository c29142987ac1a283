"""2-D toy densities. Argument: a data-set name and/or `smoke`, comma-separated.

  --config=configs/toy.py                 25 Gaussians (the original code's default problem)
  --config=configs/toy.py:rings           another data set
  --config=configs/toy.py:rings,smoke     a few steps, for tests and a first look
"""

from bdbounds.data import TOY_DATASETS as DATASETS
from configs import base


# Sharp data (modes of std 0.018) need an energy whose first layer learns short length scales fast.
ENERGY_INPUT_SCALES = {"25gaussians": 5.0}


def get_config(arg: str = ""):
  config = base.get_config()
  # 2-D runs use what measured best on 8 and 25 Gaussians (docs/results.md), besides the
  # importance-weighted negative phase (bounds.negative_phase='auto'): annealed data noise
  # gives the generator wide basins before the modes sharpen, and faster learning rates.
  config.training.data_noise = 0.3
  config.training.data_noise_fraction = 1 / 3
  config.training.energy_lr = 1e-3
  config.training.generator_lr = 1e-3
  # A third hidden layer is what lets the energy resolve 25 modes of std 0.018 in 30k steps
  # (trained alone with 1000 uniform proposals: KL 0.47 with two, 0.078 with three); it needs
  # the defensive samples, or it deepens spikes at the data the generator's proposals never reach.
  config.model.energy_hidden = (100, 100, 100)
  config.bounds.defensive_samples = 400
  for preset in filter(None, (a.strip() for a in arg.split(","))):
    if preset in DATASETS:
      config.data.name = preset
    elif preset == "smoke":
      config.training.num_steps = 20
      config.training.batch_size = 32
      config.bounds.defensive_samples = 64
      config.eval.every_steps = 10
      config.eval.num_samples = 256
      config.eval.quadrature_tol = 1e-2
      config.checkpoint.every_steps = 10
      config.log.every_steps = 5
      config.log.progress_bar = False
    else:
      raise ValueError(f"unknown preset {preset!r} in configs/toy.py; use a data set "
                       f"({', '.join(DATASETS)}) and/or 'smoke', comma-separated")
  config.model.energy_input_scale = ENERGY_INPUT_SCALES.get(config.data.name, 1.0)
  return config.lock()
