"""Flax Linen modules: energies, generators, critics. Every hyperparameter is a field."""

from bdbounds.models.toy import MLP, Critic, Energy, Generator, TimeEnergy

__all__ = ["MLP", "Critic", "Energy", "Generator", "TimeEnergy"]
