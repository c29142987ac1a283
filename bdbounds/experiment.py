"""The assembly layer: a config becomes an `Experiment` here, and only here.

The config is unpacked once into frozen settings (`BoundSettings`, `TrainSettings`,
`EvalSettings`), models, optimisers, the game's functions and the data set; training,
evaluation, sweeps and notebooks take the `Experiment` and never read the config again.
`restore(workdir)` rebuilds the experiment of a saved run with its latest (or a given) state.
"""

import dataclasses
import json
import math
import os
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from bdbounds import checkpointing, models, objectives, parallel
from bdbounds.data import IMAGE_DATASETS, TOY_DATASETS, ToyDataset, get_image_dataset, get_toy_dataset
from bdbounds.state import TrainState, create_player, create_train_state

NEGATIVE_PHASES = ("auto", "importance", "samples")
ON_NONFINITE = ("stop", "skip")


class ConfigError(ValueError):
  """The config (or the workdir it is pointed at) cannot run as given; the message names the key and
  what to use instead. The command line reports it in one line, without a traceback."""


@dataclasses.dataclass(frozen=True)
class TrainSettings:
  """`config.training` and the loop's cadences (`eval`, `checkpoint`, `log`)."""
  num_steps: int
  batch_size: int
  energy_steps: int
  generator_steps: int
  energy_lr: float
  generator_lr: float
  critic_lr: float
  b1: float
  b2: float
  lr_decay: bool
  data_noise: float
  data_noise_fraction: float
  ema_decay: float
  on_nonfinite: str
  eval_every: int
  checkpoint_every: int
  checkpoints_kept: int
  log_every: int
  progress_bar: bool

  def __post_init__(self):
    for name, key in (("num_steps", "training.num_steps"), ("batch_size", "training.batch_size"),
                      ("energy_steps", "training.energy_steps"), ("generator_steps", "training.generator_steps"),
                      ("eval_every", "eval.every_steps"), ("checkpoint_every", "checkpoint.every_steps"),
                      ("checkpoints_kept", "checkpoint.max_to_keep"), ("log_every", "log.every_steps")):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key}={value!r} must be a positive integer")
    if self.on_nonfinite not in ON_NONFINITE:
      raise ConfigError(f"training.on_nonfinite={self.on_nonfinite!r} is not one of {ON_NONFINITE}")

  @property
  def data_noise_steps(self) -> int:
    return round(self.data_noise_fraction * self.num_steps)


@dataclasses.dataclass(frozen=True)
class EvalSettings:
  """`config.eval` (its cadence is the loop's) and the test-set size."""
  evaluators: tuple            # names of the evaluators to run; () for every one that applies
  num_test: int
  num_samples: int
  grid_size: int
  quadrature_tol: float
  diffusion_num_t: int
  feature_net: str
  inception_weights: str | None
  fid_num_samples: int
  fid_reference: str
  pr_num_samples: int
  pr_k: int
  stats_dir: str | None
  batch_size: int


class Experiment(NamedTuple):
  """What a config turns into: everything the loop, evaluation and loaders need."""
  name: str                    # the data set's name
  seed: int
  settings: objectives.BoundSettings
  game: objectives.Objectives  # the losses and bound terms, resolved from `settings`
  nets: objectives.Networks
  train: TrainSettings
  eval: EvalSettings
  optimizers: dict
  dataset: Any                 # ToyDataset (2-D, sampled in JAX) or ImageDataset (read by index)
  data_shape: tuple            # one example's shape
  latent_dim: int
  init_state: Callable[[jax.Array], TrainState]

  @property
  def is_toy(self) -> bool:
    return isinstance(self.dataset, ToyDataset)

  @property
  def keys(self) -> dict:
    return create_keys(self.seed)

  @property
  def title(self) -> str:
    return f"{self.name} · {self.settings.lower} + {self.settings.upper}"


def create_keys(seed: int) -> dict:
  """The run's named PRNG keys; evaluation of a saved step reuses the same `eval` key."""
  names = ("init", "data", "train", "eval")
  return dict(zip(names, jax.random.split(jax.random.PRNGKey(seed), len(names))))


def _fields(cls, section) -> dict:
  names = {f.name for f in dataclasses.fields(cls)}
  return {k: v for k, v in section.items() if k in names}


def bound_settings(config, data_dim: int) -> objectives.BoundSettings:
  """The bounds' settings; `bounds.negative_phase='auto'` weights the energy's negative phase by
  importance wherever the generator has a density on the data space (a manifold generator
  with `model.latent_dim` equal to the data dimension)."""
  phase = config.bounds.negative_phase
  if phase not in NEGATIVE_PHASES:
    raise ConfigError(f"bounds.negative_phase={phase!r} is not one of {NEGATIVE_PHASES}")
  has_density = config.bounds.lower != "mutual_info" and config.model.latent_dim == data_dim
  if phase == "importance" and not has_density:
    raise ConfigError(
        "bounds.negative_phase='importance' needs the generator's density on the data space, which exists "
        f"only for a manifold generator (bounds.lower='jacobian' or 'jacobian_exact') with model.latent_dim "
        f"equal to the data dimension ({data_dim}); got bounds.lower={config.bounds.lower!r}, "
        f"model.latent_dim={config.model.latent_dim}. Use bounds.negative_phase='auto' or 'samples'")
  try:
    return objectives.BoundSettings(**_fields(objectives.BoundSettings, config.bounds),
                                    importance_weighting=phase == "importance" or (phase == "auto" and has_density))
  except ValueError as e:
    raise ConfigError(str(e)) from e


def train_settings(config) -> TrainSettings:
  return TrainSettings(**_fields(TrainSettings, config.training), eval_every=config.eval.every_steps,
                       checkpoint_every=config.checkpoint.every_steps,
                       checkpoints_kept=config.checkpoint.max_to_keep, log_every=config.log.every_steps,
                       progress_bar=config.log.progress_bar)


def eval_settings(config) -> EvalSettings:
  names = config.eval.evaluators
  names = tuple(n.strip() for n in names.split(",") if n.strip()) if isinstance(names, str) else tuple(names)
  return EvalSettings(**{**_fields(EvalSettings, config.eval), "evaluators": () if names == ("auto",) else names},
                      num_test=config.data.num_test)


def _optimizer(lr: float, t: TrainSettings) -> optax.GradientTransformation:
  if t.lr_decay:
    lr = optax.cosine_decay_schedule(lr, max(t.num_steps, 1), alpha=0.05)
  return optax.adam(lr, b1=t.b1, b2=t.b2)


def _dataset(config):
  """The data set a config names: a 2-D toy density, or images (digits offline; TFDS)."""
  d = config.data
  if d.name in TOY_DATASETS:
    if config.model.arch != "mlp":
      raise ConfigError(f"data.name={d.name!r} is 2-D: use model.arch='mlp', not {config.model.arch!r}")
    return get_toy_dataset(d.name)
  if d.name in IMAGE_DATASETS:
    if config.model.arch == "mlp":
      raise ConfigError(f"data.name={d.name!r} holds images: set model.arch to one of "
                        f"{sorted(models.IMAGE_ARCHITECTURES)} (the image configs in configs/ do)")
    return get_image_dataset(d.name, data_dir=d.data_dir, image_size=d.image_size, flip=d.flip)
  raise ConfigError(f"unknown data set data.name={d.name!r}; choose one of {TOY_DATASETS + IMAGE_DATASETS}")


def _strided_conv(name: str, settings) -> str:
  """`auto`: the stride-2 convolutions as patches where training differentiates the energy twice (XLA's
  CPU convolution is slow there, bench/README.md), XLA's convolution elsewhere (a little faster)."""
  if name == "auto":
    return "patches" if settings.differentiates_energy_gradient else "xla"
  return name


def _modules(config, settings, data_shape):
  """`(energy, generator, critic)` Linen modules; the energy is time-conditioned for the diffusion bound,
  and the critic is the Gaussian encoder `log r(z | x)` for the Barber–Agakov estimator."""
  m = config.model
  encoder_critic = settings.mi_estimator == "barber_agakov"
  for name in ("energy_hidden", "generator_hidden", "critic_hidden"):
    widths = m[name] if isinstance(m[name], (tuple, list)) else (m[name],)
    if not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths):
      raise ConfigError(f"model.{name}={m[name]!r}: hidden widths are positive integers, e.g. "
                        f"--config.model.{name}='(100, 100)'")
  if m.arch == "mlp":
    energy = (models.TimeEnergy(m.energy_hidden, m.activation, m.time_frequencies, m.energy_base_std,
                                m.energy_input_scale) if settings.time_conditioned_energy else
              models.Energy(m.energy_hidden, m.activation, m.energy_base_std, m.energy_input_scale))
    generator = models.Generator(m.generator_hidden, data_shape[-1], m.activation, m.sigma_min, m.sigma_max,
                                 m.sigma_init, m.generator_input_scale)
    critic = (models.GaussianEncoder if encoder_critic else models.Critic)(m.critic_hidden, m.activation)
    return energy, generator, critic
  image = models.build_image_networks(
      m.arch, data_shape, width=m.width, act=m.activation, upsample=m.upsample,
      critic_hidden=m.critic_hidden, num_frequencies=m.time_frequencies, sigma_min=m.sigma_min,
      sigma_max=m.sigma_max, sigma_init=m.sigma_init, encoder_critic=encoder_critic,
      strided_conv=_strided_conv(m.strided_conv, settings))
  return (image.time_energy if settings.time_conditioned_energy else image.energy), image.generator, image.critic


def create_experiment(config: ml_collections.ConfigDict, dataset=None) -> Experiment:
  """Models, optimisers, losses and data of a config; `dataset` replaces the one it names
  (benchmarks on synthetic images use this). Every mistake the config can hold is a
  `ConfigError` here, before anything is written."""
  dataset = _dataset(config) if dataset is None else dataset
  data_shape = (2,) if isinstance(dataset, ToyDataset) else tuple(dataset.image_shape)
  settings = bound_settings(config, math.prod(data_shape))
  train, evaluation = train_settings(config), eval_settings(config)
  energy_module, generator_module, critic_module = _modules(config, settings, data_shape)
  if settings.time_conditioned_energy:
    energy = lambda p, x: energy_module.apply(p, x, 0.0)
    time_energy = energy_module.apply
    energy_init = lambda key, x: energy_module.init(key, x, 0.0)
  else:
    energy, time_energy, energy_init = energy_module.apply, None, energy_module.init
  critic_module = critic_module if settings.uses_critic else None
  nets = objectives.Networks(
      energy=energy, time_energy=time_energy, generator=generator_module.apply,
      sigma=lambda p: generator_module.apply(p, method="sigma"),
      critic=critic_module.apply if critic_module else None)
  optimizers = {"energy": _optimizer(train.energy_lr, train), "generator": _optimizer(train.generator_lr, train),
                "critic": _optimizer(train.critic_lr, train)}
  latent_dim = config.model.latent_dim

  def init_state(key):
    k_e, k_g, k_c = jax.random.split(key, 3)
    x, z = jnp.zeros(data_shape), jnp.zeros((latent_dim,))
    energy_player = create_player(energy_init(k_e, x), optimizers["energy"])
    generator_params = generator_module.init(k_g, z)
    generator_player = create_player(generator_params, optimizers["generator"])
    critic_player = (create_player(critic_module.init(k_c, x, z), optimizers["critic"])
                     if critic_module else None)
    # A copy: the state is donated to the step, and one buffer cannot be donated twice.
    ema = jax.tree_util.tree_map(jnp.copy, generator_params) if train.ema_decay > 0 else None
    return create_train_state(energy_player, generator_player, critic_player, generator_ema=ema)

  return Experiment(config.data.name, int(config.seed), settings, objectives.make_objectives(settings, nets), nets,
                    train, evaluation, optimizers, dataset, data_shape, latent_dim, init_state)


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run in `workdir` was started with (its `config.json`)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise checkpointing.CheckpointNotFoundError(f"{workdir} holds no run ({path} is missing)")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def restore(workdir: str, step: int | None = None, *, config=None) -> tuple[Experiment, TrainState]:
  """The experiment of the run in `workdir` (its own config unless `config` is given) and its saved
  state (latest step by default), replicated over this machine's devices whatever layout it was
  saved from."""
  exp = create_experiment(load_config(workdir) if config is None else config)
  sharding = parallel.replicated(parallel.create_mesh())
  template = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                                    jax.eval_shape(exp.init_state, jax.random.PRNGKey(0)))
  with checkpointing.Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
    if ckpt.latest_step() is None:
      raise checkpointing.CheckpointNotFoundError(
          f"no checkpoint in {workdir}/checkpoints; train first with --mode=train")
    state, _ = ckpt.restore(template, step=step)
  return exp, state
