"""Every configuration key, with its default and a one-line meaning. Data-set files override."""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.seed = 0                                   # base PRNG seed: parameters, data order, training noise

  c.data = ml_collections.ConfigDict()
  c.data.name = "25gaussians"                  # a 2-D toy density (bdbounds.data.TOY_DATASETS) or images (IMAGE_DATASETS)
  c.data.num_test = 20_000                     # held-out examples for the test NLL (images: at most the test split)
  c.data.data_dir = ml_collections.FieldReference(None, field_type=str)  # TFDS data directory (None: ~/tensorflow_datasets)
  c.data.image_size = ml_collections.FieldReference(None, field_type=int)  # images: side length (None: the data set's default)
  c.data.flip = ml_collections.FieldReference(None, field_type=bool)  # images: random horizontal flips (None: the data set's default)

  c.model = ml_collections.ConfigDict()
  c.model.arch = "mlp"                         # mlp (2-D data) | dcgan (images up to 32², or 64²) | resnet (64×64 images)
  c.model.latent_dim = 2                       # generator latent dimension d
  c.model.width = 64                           # conv models: base channel width
  c.model.upsample = "nearest"                 # conv generators: nearest | transpose | pixel_shuffle
  c.model.strided_conv = "auto"                # dcgan trunks' stride-2 convs: patches (patches × kernel: fast second derivatives on CPU) | xla (XLA's convolution, the same function) | auto (patches for r1, score_matching, diffusion)
  c.model.energy_hidden = (100, 100)           # energy MLP hidden widths
  c.model.energy_base_std = 5.0                # std of the Gaussian base term ‖x‖²/(2s²) that keeps exp(−E) normalisable
  c.model.generator_hidden = (100, 100)        # generator MLP hidden widths
  c.model.energy_input_scale = 1.0             # x is multiplied by this before the energy MLP (sharp data: larger)
  c.model.generator_input_scale = 1.0          # z is multiplied by this before the generator MLP
  c.model.critic_hidden = (100, 100)           # MI critic MLP hidden widths
  c.model.activation = "silu"                  # activation of every MLP (a flax.linen function name)
  c.model.time_frequencies = 8                 # Fourier features of t in the time-conditioned energy
  c.model.sigma_min = 0.01                     # lower clamp of the noisy generator's learnable σ
  c.model.sigma_max = 0.5                      # upper clamp of σ
  c.model.sigma_init = 0.1                     # initial σ

  c.bounds = ml_collections.ConfigDict()
  c.bounds.lower = "jacobian"                  # generator entropy lower bound: jacobian | jacobian_exact | mutual_info
  c.bounds.upper = "latent_fisher"             # EBM KL upper bound: none | latent_fisher | score_matching | r1 | diffusion
  c.bounds.entropy_weight = 1.0                # w_H on the entropy lower bound in the generator loss
  c.bounds.upper_weight = 1e-2                 # λ = C/2 on the KL upper-bound term (constant schedule)
  c.bounds.weight_schedule = "adaptive"        # adaptive (λ_t = scale (offset + t)^-power, the original code's) | constant
  c.bounds.adaptive_weight_scale = 0.7         # adaptive schedule: scale of λ_t
  c.bounds.adaptive_weight_offset = 2307.0     # adaptive schedule: step offset of λ_t
  c.bounds.adaptive_weight_power = 0.55        # adaptive schedule: decay exponent of λ_t
  c.bounds.hinge = ml_collections.FieldReference(None, field_type=float)  # τ in relu(λ·pen − τ); None: off
  c.bounds.jacobian_method = "dense"           # s_min solver: dense (exact, small d) | lanczos | lobpcg
  c.bounds.jacobian_num_iters = 10             # Krylov / LOBPCG iterations for the matrix-free solvers
  c.bounds.jacobian_k = 1                      # number of smallest singular values in the bound
  c.bounds.mi_estimator = "barber_agakov"      # MI lower bound, noisy generator: barber_agakov (a Gaussian encoder r(z|x) as the critic) | nwj | infonce (≤ log B; O(B²) critic calls) | dv (its batch plug-in over-states I)
  c.bounds.num_probes = 1                      # Hutchinson / latent-Fisher probe vectors per example
  c.bounds.diffusion_num_t = 4                 # diffusion times per example (stratified)
  c.bounds.gamma_min = -13.3                   # γ at t = 0 (log-SNR = −γ)
  c.bounds.gamma_max = 5.0                     # γ at t = 1
  c.bounds.negative_phase = "auto"             # energy's fake-sample term: importance (log Ẑ_K, weights from the generator's exact density) | samples (plain mean) | auto (importance where the generator has a density: manifold, latent_dim = data dim)
  c.bounds.defensive_samples = 0               # importance phase: this many more proposals from a multi-scale kernel density around the data batch, pooled with the generator's (guards regions the generator has left)

  c.training = ml_collections.ConfigDict()
  c.training.num_steps = 30_000                # train steps (one step = energy_steps + generator_steps updates)
  c.training.batch_size = 200                  # global batch, split across all devices
  c.training.energy_steps = 1                  # energy updates per step
  c.training.generator_steps = 1               # generator (and critic) updates per step
  c.training.energy_lr = 1e-4                  # Adam learning rate of the energy
  c.training.generator_lr = 3e-4               # Adam learning rate of the generator (faster: it must track p_θ)
  c.training.critic_lr = 3e-4                  # Adam learning rate of the MI critic
  c.training.b1 = 0.0                          # Adam β1 of every optimiser (0: no momentum, stabler games)
  c.training.b2 = 0.9                          # Adam β2 of every optimiser
  c.training.lr_decay = True                   # cosine decay of every learning rate to 0.05× over the run
  c.training.data_noise = 0.0                  # initial std of Gaussian noise added to the data seen by the energy (0: off)
  c.training.data_noise_fraction = 0.5         # the noise decays as (1 − step/(this · num_steps))² to 0
  c.training.ema_decay = 0.0                   # EMA of the generator's parameters, used for sample grids (0: off)
  c.training.on_nonfinite = "stop"             # stop (with a report) | skip (drop the update and count it)

  c.eval = ml_collections.ConfigDict()
  c.eval.every_steps = 10_000                  # evaluation cadence (and at the last step)
  c.eval.evaluators = "auto"                   # comma-separated: bound_terms, upper_bound, density (2-D quadrature), diffusion_nll, sample_quality, samples; auto: every one that applies
  c.eval.num_samples = 2_000                   # generator samples per plot and energy statistics
  c.eval.grid_size = 64                        # images: samples in the PNG grid
  c.eval.quadrature_tol = 1e-3                 # target change of log Z under grid refinement (nats)
  c.eval.diffusion_num_t = 16                  # diffusion bound: times per test example for the NLL / bits per dim
  c.eval.feature_net = "inception"             # images: features for FID/IS/PR: inception | digits_classifier (trained in seconds, offline)
  c.eval.inception_weights = ml_collections.FieldReference(None, field_type=str)  # .npz from bdbounds.tools.convert_fid_inception; None: FID/IS/PR skipped
  c.eval.fid_num_samples = 50_000              # images: generator samples for FID, IS and precision/recall
  c.eval.fid_reference = "train"               # images: reference split for FID (train: the common 50k protocol | test)
  c.eval.pr_num_samples = 10_000               # images: features per set for k-NN precision/recall and PRD
  c.eval.pr_k = 3                              # neighbours in the k-NN precision/recall
  c.eval.stats_dir = ml_collections.FieldReference(None, field_type=str)  # cache of reference statistics (None: ~/.cache/bdbounds)
  c.eval.batch_size = 500                      # images per batch when sampling, extracting features and bounding NLL

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 2_000             # checkpoint cadence (and at the last step)
  c.checkpoint.max_to_keep = 3                 # checkpoints kept on disk

  c.log = ml_collections.ConfigDict()
  c.log.every_steps = 500                      # training-metric cadence (metrics.jsonl, TensorBoard)
  c.log.progress_bar = True                    # tqdm progress bar on process 0
  return c
