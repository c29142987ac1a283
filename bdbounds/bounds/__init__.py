"""The four bidirectional bounds as pure JAX functions of one example.

No flax, optax, config or I/O here: callers vmap, reduce and weight (see `objectives`).
Every inequality is derived in docs/bounds.md and checked against closed forms in tests/bounds.
"""

from bdbounds.bounds.channel_entropy import gaussian_channel_entropy_bounds
from bdbounds.bounds.diffusion import DiffusionBound, diffusion_nll_bound, sample_times
from bdbounds.bounds.gradient_penalty import (generator_fisher_terms, laplacian, latent_fisher_penalty,
                                              lsi_kl_upper_bound, r1_penalty, score_matching_term)
from bdbounds.bounds.importance import (chi2_log_partition_bound, data_kernel_log_density, data_kernel_proposal,
                                        generator_log_density, generator_log_density_and_score, histogram_log_density,
                                        histogram_proposal, importance_log_partition)
from bdbounds.bounds.jacobian import (half_logdet_exact, half_logdet_with_gradient, jtj_eigs, jtj_matvec,
                                      logdet_lower_bound)
from bdbounds.bounds.linalg import EigResult, lanczos_smallest, lobpcg_smallest
from bdbounds.bounds.mutual_info import (barber_agakov_bound, barber_agakov_terms, dv_bound,
                                         gaussian_conditional_entropy, infonce_bound, jsd_mi_estimate,
                                         mine_dv_surrogate, nwj_bound, update_log_ema)

__all__ = [
    "DiffusionBound", "EigResult", "barber_agakov_bound", "barber_agakov_terms", "chi2_log_partition_bound",
    "data_kernel_log_density", "data_kernel_proposal", "diffusion_nll_bound", "dv_bound",
    "gaussian_channel_entropy_bounds", "gaussian_conditional_entropy", "generator_fisher_terms",
    "generator_log_density", "generator_log_density_and_score", "half_logdet_exact",
    "half_logdet_with_gradient", "histogram_log_density", "histogram_proposal", "importance_log_partition",
    "infonce_bound", "jsd_mi_estimate", "jtj_eigs", "jtj_matvec", "lanczos_smallest", "laplacian",
    "latent_fisher_penalty", "lobpcg_smallest", "logdet_lower_bound", "lsi_kl_upper_bound",
    "mine_dv_surrogate", "nwj_bound", "r1_penalty", "sample_times", "score_matching_term", "update_log_ema",
]
