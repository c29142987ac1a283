"""scikit-learn's bundled 8×8 digits at their own size: the offline image default.

  --config=configs/digits.py          recognisable digits on a 2-core CPU in about 11 minutes
  --config=configs/digits.py:smoke    a few tiny steps
  --config.data.image_size=16         upsampled (bilinear) to 16×16; about 7× slower per step
"""

from configs import images


def get_config(arg: str = ""):
  return images.get_config("digits", arg, image_size=8, width=32, latent_dim=32, num_steps=8_000,
                           eval_every=2_000)
