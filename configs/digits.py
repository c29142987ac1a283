"""scikit-learn's bundled 8×8 digits at their own size: the offline image default.

  --config=configs/digits.py          recognisable digits on a 2-core CPU in about 11 minutes
  --config=configs/digits.py:smoke    a few tiny steps
  --config.data.image_size=16         upsampled (bilinear) to 16×16; about 7× slower per step

FID, IS and precision/recall use a small digit classifier trained at evaluation time.
"""

from configs import images


def get_config(arg: str = ""):
  c = images.get_config("digits", arg, image_size=8, width=32, latent_dim=32, num_steps=8_000,
                        eval_every=2_000)
  # FID/IS/PR with a digit classifier trained at evaluation time (Inception means nothing at 8×8);
  # 2000 samples against the 1497 training digits keep an evaluation within seconds.
  c.eval.feature_net = "digits_classifier"
  c.eval.fid_num_samples = min(c.eval.fid_num_samples, 2_000)
  c.eval.pr_num_samples = min(c.eval.pr_num_samples, 1_000)
  return c
