"""Evaluation metrics for 2-D energy-based models."""

from bdbounds.metrics.quadrature import (
  GridLogZ,
  MonteCarloEstimate,
  adaptive_log_partition,
  density_on_grid,
  kl_data_model,
  kl_data_model_mc,
  log_density_fn,
  log_partition_on_grid,
  nll,
)

__all__ = [
  "GridLogZ",
  "MonteCarloEstimate",
  "adaptive_log_partition",
  "density_on_grid",
  "kl_data_model",
  "kl_data_model_mc",
  "log_density_fn",
  "log_partition_on_grid",
  "nll",
]
