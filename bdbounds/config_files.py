"""Config files loaded by path, as `python -m bdbounds.main --config=configs/toy.py:rings` loads them.

The files in configs/ are not part of the package: they are read from wherever the command
names them (relative paths from the working directory), and their own `from configs import
base` resolves because commands run from the repository root, as main's does.
"""

import importlib.util
import inspect
import os
from typing import Any, Mapping

import ml_collections


class ConfigFileError(ValueError):
  """A config file that is missing, fails to load, or refuses its presets; the message names it."""


def split_config_arg(text: str) -> tuple[str, str]:
  """`"configs/toy.py:rings,smoke"` -> `("configs/toy.py", "rings,smoke")`: the text after the
  first colon is the file's argument, as config_flags reads it."""
  path, _, arg = text.partition(":")
  return path, arg


def with_presets(text: str, *presets: str) -> str:
  """`text` with `presets` appended to its argument (`configs/toy.py:smoke` + rings ->
  `configs/toy.py:smoke,rings`): later presets win where they set the same key."""
  path, arg = split_config_arg(text)
  return f"{path}:{','.join(filter(None, (arg, *presets)))}"


def _load_module(path: str):
  if not os.path.isfile(path):
    raise ConfigFileError(f"{path}: no such config file (relative paths start at the working directory; "
                          f"run from the repository root)")
  name = "config_file_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except ModuleNotFoundError as e:
    if e.name == "configs" or (e.name or "").startswith("configs."):
      raise ConfigFileError(f"{path} imports configs/, which is found only from the repository root: "
                            f"run the command from there") from e
    raise
  if not callable(getattr(module, "get_config", None)):
    raise ConfigFileError(f"{path} defines no get_config()")
  return module


def _takes_argument(fn) -> bool:
  try:
    return bool(inspect.signature(fn).parameters)
  except (TypeError, ValueError):
    return True


def load_config_file(text: str) -> ml_collections.ConfigDict:
  """The locked config of `path[:argument]`: the file's `get_config(argument)`, or `get_config()`
  when no argument is given (as config_flags calls it)."""
  path, arg = split_config_arg(text)
  module = _load_module(path)
  if ":" in text and not _takes_argument(module.get_config):
    raise ConfigFileError(f"{text}: the get_config() of {path} takes no argument")
  try:
    config = module.get_config(arg) if ":" in text else module.get_config()
  except ValueError as e:  # an unknown preset, say: the file's own message, with the file named
    raise ConfigFileError(f"{text}: {e}") from e
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigFileError(f"{text}: get_config() returned {type(config).__name__}, not a ConfigDict")
  return config.lock()


def has_key(config: ml_collections.ConfigDict, dotted: str) -> bool:
  node = config
  for part in dotted.split("."):
    if not hasattr(node, "keys") or part not in node.keys():
      return False
    node = node[part]
  return True


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """`config` with flattened `overrides` (`{"training.num_steps": 10}`) applied, locked. Unknown keys
  are refused rather than added: a typo would otherwise change nothing, silently."""
  unknown = [k for k in overrides if not has_key(config, k)]
  if unknown:
    raise ValueError(f"unknown config keys {unknown}; every key is listed in configs/base.py")
  with config.unlocked():
    config.update_from_flattened_dict(dict(overrides))
  return config.lock()
