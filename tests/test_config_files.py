"""Config files loaded by path, as main's --config loads them, and flattened overrides."""

import os

import pytest

from bdbounds import config_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = os.path.join(ROOT, "configs", "toy.py")


def test_a_config_file_loads_by_path_with_its_presets():
  config = config_files.load_config_file(f"{TOY}:rings,smoke")
  assert (config.data.name, config.training.num_steps, config.training.batch_size) == ("rings", 20, 32)
  assert config.is_locked
  default = config_files.load_config_file(TOY)  # no argument: get_config() with its own default
  assert (default.data.name, default.training.num_steps) == ("25gaussians", 30_000)
  base = config_files.load_config_file(os.path.join(ROOT, "configs", "base.py"))
  assert base.training.batch_size == 200
  with pytest.raises(config_files.ConfigFileError, match="takes no argument"):
    config_files.load_config_file(os.path.join(ROOT, "configs", "base.py") + ":smoke")


def test_presets_are_appended_after_the_files_own():
  assert config_files.with_presets("configs/toy.py", "rings") == "configs/toy.py:rings"
  assert config_files.with_presets("configs/toy.py:smoke", "rings") == "configs/toy.py:smoke,rings"
  config = config_files.load_config_file(config_files.with_presets(f"{TOY}:moons,smoke", "rings"))
  assert config.data.name == "rings" and config.training.num_steps == 20


def test_an_unknown_preset_or_file_is_named_in_the_error(tmp_path):
  with pytest.raises(config_files.ConfigFileError, match=r"toy\.py:ringz: unknown preset 'ringz' in configs/toy\.py"):
    config_files.load_config_file(f"{TOY}:ringz")
  with pytest.raises(config_files.ConfigFileError, match="no such config file"):
    config_files.load_config_file(str(tmp_path / "nothing.py"))
  empty = tmp_path / "empty.py"
  empty.write_text("x = 1\n")
  with pytest.raises(config_files.ConfigFileError, match="defines no get_config"):
    config_files.load_config_file(str(empty))


def test_overrides_change_known_keys_and_refuse_unknown_ones():
  config = config_files.load_config_file(f"{TOY}:rings")
  config = config_files.apply_overrides(config, {"training.num_steps": 7, "model.energy_hidden": (8, 8),
                                                 "bounds.upper": "r1"})
  assert (config.training.num_steps, tuple(config.model.energy_hidden), config.bounds.upper) == (7, (8, 8), "r1")
  assert config.is_locked
  with pytest.raises(ValueError, match=r"unknown config keys \['training.num_stepz'\]"):
    config_files.apply_overrides(config, {"training.num_stepz": 3})
  with pytest.raises(ValueError, match="unknown config keys"):
    config_files.apply_overrides(config, {"training.num_steps.x": 3})  # below a leaf
  assert config.training.num_steps == 7  # a refused override changes nothing
