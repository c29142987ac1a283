"""MNIST padded to 32×32 (TFDS; prepare it once with the command the reader prints).

  --config=configs/mnist.py --config.data.data_dir=/path/to/tensorflow_datasets
"""

from configs import images


def get_config(arg: str = ""):
  return images.get_config("mnist", arg, image_size=32, width=32, latent_dim=64)
