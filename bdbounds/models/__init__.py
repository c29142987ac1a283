"""Flax Linen modules: energies, generators, critics. Every hyperparameter is a field."""

from bdbounds.models.images import (IMAGE_ARCHITECTURES, STRIDED_CONVS, UPSAMPLING_MODES, ConvCritic, ConvEnergy,
                                    ConvGaussianEncoder, ConvTimeEnergy, DCGANDecoder, DCGANTrunk,
                                    ImageGenerator, ImageNetworks, PatchConv, ResNetDecoder, ResNetTrunk,
                                    build_image_networks, num_stages)
from bdbounds.models.toy import MLP, Critic, Energy, GaussianEncoder, Generator, TimeEnergy

__all__ = ["MLP", "Critic", "Energy", "GaussianEncoder", "Generator", "TimeEnergy",
           "IMAGE_ARCHITECTURES", "STRIDED_CONVS", "UPSAMPLING_MODES", "ConvCritic", "ConvEnergy",
           "ConvGaussianEncoder", "ConvTimeEnergy", "DCGANDecoder", "DCGANTrunk", "ImageGenerator", "ImageNetworks",
           "PatchConv", "ResNetDecoder", "ResNetTrunk", "build_image_networks", "num_stages"]
