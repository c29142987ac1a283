"""Checks of the feature arrays that the sample-quality metrics take.

Features are ``[N, F]`` arrays, one row per sample (Inception pool features,
classifier logits, or any other embedding); "real" is the reference (data)
set and "fake" the model's samples.
"""

from __future__ import annotations

import numpy as np

__all__ = ["as_features", "check_same_dimension"]


def as_features(features, name: str, min_rows: int = 1) -> np.ndarray:
  """``features`` as a numeric, finite ``[N, F]`` array with ``N >= min_rows``; raises
  ``ValueError`` naming ``name`` otherwise."""
  features = np.asarray(features)
  if features.ndim != 2:
    raise ValueError(f"{name} must have shape [N, F], got {features.shape}")
  if features.shape[0] < min_rows:
    raise ValueError(f"{name} needs at least {min_rows} rows, got {features.shape[0]}")
  if not np.issubdtype(features.dtype, np.number):
    raise ValueError(f"{name} must be numeric, got dtype {features.dtype}")
  if not np.all(np.isfinite(features)):
    raise ValueError(f"{name} contains non-finite values")
  return features


def check_same_dimension(real: np.ndarray, fake: np.ndarray) -> None:
  """Raises ``ValueError`` unless the real and fake features have the same ``F``."""
  if real.shape[1] != fake.shape[1]:
    raise ValueError(
      f"real and fake features differ in dimension: {real.shape[1]} vs {fake.shape[1]}"
    )
