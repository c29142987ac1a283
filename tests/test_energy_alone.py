"""The energy-alone baseline learns a density, takes its settings from --config, and refuses data
without a known density."""

import os

import pytest

from bdbounds.experiments import energy_alone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def in_repository_root(monkeypatch):
  """Config files are named relative to the repository root, as on the command line."""
  monkeypatch.chdir(ROOT)


def test_energy_alone_learns_eight_gaussians():
  """A small energy gets from about 1.4 nats (after 200 steps) to 0.40 in 2000 (measured)."""
  rows = list(energy_alone.train_energy_alone("8gaussians", (32, 32), num_steps=2000, num_proposals=200,
                                              num_evals=2, num_test=5000))
  assert [r["step"] for r in rows] == [1000, 2000]
  assert rows[-1]["kl"] < 0.6


def test_the_training_settings_come_from_the_config_file(tmp_path):
  frozen = tmp_path / "frozen.py"  # the 2-D defaults with a learning rate of zero: nothing moves
  frozen.write_text("from configs import toy\n\n\ndef get_config(arg=''):\n  c = toy.get_config(arg)\n"
                    "  c.training.energy_lr = 0.0\n  return c\n")
  run = lambda config_file: [r["kl"] for r in energy_alone.train_energy_alone(
      "8gaussians", (8,), num_steps=4, num_proposals=50, num_evals=2, num_test=2000, config_file=config_file)]
  assert len(set(run(str(frozen)))) == 1
  assert len(set(run(energy_alone.DEFAULT_CONFIG))) == 2


def test_data_without_a_density_or_a_bad_config_is_refused(capsys):
  with pytest.raises(SystemExit):
    energy_alone.main(["--data=pinwheel", "--num_steps=1"])
  assert "no closed-form density" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    energy_alone.main(["--data=rings", "--num_steps=1", "--config=configs/toy.py:ringz"])
  assert "--config: configs/toy.py:ringz,rings: unknown preset 'ringz'" in capsys.readouterr().err
