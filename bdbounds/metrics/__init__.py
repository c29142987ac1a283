"""Evaluation metrics: grid quadrature for 2-D energy-based models, bits per dimension of images,
sample quality on features."""

from bdbounds.metrics.density import (
  MonteCarloEstimate,
  density_on_grid,
  kl_data_model,
  kl_data_model_mc,
  log_density_fn,
  nll,
)
from bdbounds.metrics.entropy import GridEntropy, noisy_generator_entropy
from bdbounds.metrics.likelihood import bin_width, bits_per_dim, dequantize
from bdbounds.metrics.prd import kmeans, prd_curve, prd_f_beta, prd_from_histograms, prd_scores
from bdbounds.metrics.precision_recall import precision_recall_knn
from bdbounds.metrics.quadrature import GridLogZ, adaptive_log_partition, log_partition_on_grid
from bdbounds.metrics.sample_quality import feature_statistics, frechet_distance, inception_score

__all__ = [
  "GridEntropy",
  "noisy_generator_entropy",
  "GridLogZ",
  "MonteCarloEstimate",
  "adaptive_log_partition",
  "density_on_grid",
  "kl_data_model",
  "kl_data_model_mc",
  "log_density_fn",
  "log_partition_on_grid",
  "nll",
  "bin_width",
  "bits_per_dim",
  "dequantize",
  "feature_statistics",
  "frechet_distance",
  "inception_score",
  "kmeans",
  "prd_curve",
  "prd_f_beta",
  "prd_from_histograms",
  "prd_scores",
  "precision_recall_knn",
]
