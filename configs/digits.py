"""scikit-learn's bundled 8×8 digits, upsampled to 16×16: the offline image default.

  --config=configs/digits.py          trains on CPU in minutes
  --config=configs/digits.py:smoke    a few tiny steps
"""

from configs import images


def get_config(arg: str = ""):
  return images.get_config("digits", arg, image_size=16, width=32, latent_dim=32, num_steps=6_000,
                           eval_every=2_000)
