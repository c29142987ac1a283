"""The energy-alone baseline learns a density, and refuses data without a known density."""

import pytest

from bdbounds.experiments import energy_alone


def test_energy_alone_learns_eight_gaussians():
  """A small energy gets from about 1.4 nats (after 200 steps) to 0.40 in 2000 (measured)."""
  rows = list(energy_alone.train_energy_alone("8gaussians", (32, 32), num_steps=2000, num_proposals=200,
                                              num_evals=2, num_test=5000))
  assert [r["step"] for r in rows] == [1000, 2000]
  assert rows[-1]["kl"] < 0.6


def test_data_without_a_density_is_refused(capsys):
  with pytest.raises(SystemExit):
    energy_alone.main(["--data=pinwheel", "--num_steps=1"])
  assert "no closed-form density" in capsys.readouterr().err
