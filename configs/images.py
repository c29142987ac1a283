"""Shared defaults and presets of the image configs (digits, mnist, cifar10, celeba).

Each data-set file calls `get_config(name, arg, **data_set_overrides)`; the argument after
the colon takes `smoke` (a few tiny steps on CPU, for tests and a first look).
"""

from configs import base


def get_config(data_name: str, arg: str, *, image_size=None, arch="dcgan", width=64, latent_dim=128,
               num_steps=100_000, eval_every=5_000):
  c = base.get_config()
  c.data.name = data_name
  c.data.image_size = image_size
  c.data.num_test = 10_000
  c.model.arch = arch
  c.model.width = width
  c.model.latent_dim = latent_dim
  c.model.critic_hidden = (256,)
  c.bounds.jacobian_method = "lanczos"   # matrix-free: J is D × d with D in the thousands
  c.bounds.jacobian_num_iters = 4
  c.training.num_steps = num_steps
  c.training.batch_size = 64
  c.training.ema_decay = 0.999
  c.eval.every_steps = eval_every
  c.eval.num_samples = 256
  c.checkpoint.every_steps = 1_000
  c.log.every_steps = 100
  for preset in filter(None, (a.strip() for a in arg.split(","))):
    if preset == "smoke":
      c.model.width = 8
      c.model.latent_dim = 16
      c.model.critic_hidden = (32,)
      c.training.num_steps = 6
      c.training.batch_size = 8
      c.eval.every_steps = 3
      c.eval.num_samples = 16
      c.eval.grid_size = 16
      c.eval.fid_num_samples = 64
      c.eval.pr_num_samples = 64
      c.eval.diffusion_num_t = 2
      c.checkpoint.every_steps = 3
      c.log.every_steps = 2
      c.log.progress_bar = False
    else:
      raise ValueError(f"unknown preset {preset!r} for {data_name}; the only preset is 'smoke'")
  return c.lock()
