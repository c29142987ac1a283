"""A small image classifier whose penultimate layer serves as features for sample metrics."""

from typing import Sequence

import flax.linen as nn
import jax


class SmallClassifier(nn.Module):
  """Two convolutions and a dense layer: `images [N, H, W, C] -> (features [N, F], logits [N, K])`.

  Meant for small images (8×8 to 32×32 digits), where Inception's 299×299 view is meaningless.
  """
  num_classes: int = 10
  channels: Sequence[int] = (32, 64)
  num_features: int = 128

  @nn.compact
  def __call__(self, x):
    h = x
    for i, c in enumerate(self.channels):
      h = nn.relu(nn.Conv(c, (3, 3), strides=(1 if i == 0 else 2), name=f"conv{i}")(h))
    h = h.reshape(h.shape[0], -1)
    features = nn.relu(nn.Dense(self.num_features, name="features")(h))
    return features, nn.Dense(self.num_classes, name="logits")(features)

  def init_params(self, key, image_shape) -> dict:
    return self.init(key, jax.numpy.zeros((1, *image_shape)))["params"]
