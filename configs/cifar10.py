"""CIFAR-10 at 32×32 with the DCGAN pair (latent 128, as in the original paper) on TFDS data."""

from configs import images


def get_config(arg: str = ""):
  return images.get_config("cifar10", arg)
