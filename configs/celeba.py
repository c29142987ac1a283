"""CelebA at 64×64 (centre crop 140, resize) with the ResNet pair (latent 128) on TFDS data."""

from configs import images


def get_config(arg: str = ""):
  return images.get_config("celeba64", arg, arch="resnet", image_size=64)
