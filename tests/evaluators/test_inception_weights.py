"""The FID Inception's weights: the converter from pytorch-fid's checkpoint (its mapping and its
command line) and the .npz file's writing, reading and checks, on random weights in pytorch-fid's
names and layouts (`fake_state_dict`)."""

import sys

import jax
import numpy as np
import pytest

from bdbounds.evaluators.inception_weights import (
    CHECKPOINT_NAME,
    InceptionWeightsError,
    expected_variable_shapes,
    flatten_variables,
    load_inception_variables,
    save_inception_variables,
    unflatten_variables,
)
from bdbounds.models import inception
from bdbounds.tools import convert_fid_inception as convert
# The network's fixtures, shared with its own tests (pytest finds fixtures imported by name).
from tests.models.test_inception import SIDE, SMALL, fake_state_dict, images, state_dict, variables  # noqa: F401


@pytest.fixture(scope="module")
def outputs(variables, images):
  return inception.make_inception_fn(variables, batch_size=2, module=SMALL)(images)


# --------------------------------------------------------------------------- converter

def test_converter_mapping(state_dict, variables):
  params, stats = variables["params"], variables["batch_stats"]
  np.testing.assert_array_equal(params["fc"]["kernel"], state_dict["fc.weight"].T)
  np.testing.assert_array_equal(params["fc"]["bias"], state_dict["fc.bias"])
  layer = params["Mixed_6b"]["branch7x7_2"]   # kernel (1, 7): any axis mix-up shows
  weight = state_dict["Mixed_6b.branch7x7_2.conv.weight"]
  assert layer["conv"]["kernel"].shape == (1, 7, 128, 128)
  np.testing.assert_array_equal(layer["conv"]["kernel"][0, 5, 3, 9], weight[9, 3, 0, 5])
  np.testing.assert_array_equal(layer["conv"]["kernel"], weight.transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(layer["bn"]["scale"], state_dict["Mixed_6b.branch7x7_2.bn.weight"])
  np.testing.assert_array_equal(layer["bn"]["bias"], state_dict["Mixed_6b.branch7x7_2.bn.bias"])
  bn_stats = stats["Mixed_6b"]["branch7x7_2"]["bn"]
  np.testing.assert_array_equal(bn_stats["mean"], state_dict["Mixed_6b.branch7x7_2.bn.running_mean"])
  np.testing.assert_array_equal(bn_stats["var"], state_dict["Mixed_6b.branch7x7_2.bn.running_var"])
  keys = flatten_variables(variables)
  assert not any("num_batches_tracked" in key for key in keys)
  assert set(keys) == set(expected_variable_shapes())


@pytest.mark.parametrize("edit, names", [
    (lambda sd: sd.pop("Mixed_7c.branch_pool.bn.running_var"), ["Mixed_7c.branch_pool.bn.running_var"]),
    (lambda sd: sd.update({"AuxLogits.fc.weight": np.zeros((1008, 768))}), ["AuxLogits.fc.weight"]),
    (lambda sd: sd.update({"fc.weight": np.zeros((1000, 2048)), "fc.bias": np.zeros(1000)}),
     ["fc.weight", "(1000, 2048)", "(1008, 2048)"]),
])
def test_converter_rejects_other_state_dicts(state_dict, edit, names):
  state_dict = dict(state_dict)
  edit(state_dict)
  with pytest.raises(InceptionWeightsError) as error:
    convert.convert_state_dict(state_dict)
  for name in names:
    assert name in str(error.value)


def test_cli_without_torch_says_how_to_install(tmp_path, monkeypatch):
  checkpoint = tmp_path / CHECKPOINT_NAME
  checkpoint.write_bytes(b"not read")
  monkeypatch.setitem(sys.modules, "torch", None)   # `import torch` raises ImportError
  with pytest.raises(SystemExit, match=r'pip install -e "\.\[convert\]"'):
    convert.main(["--input", str(checkpoint), "--output", str(tmp_path / "out.npz")])
  assert not (tmp_path / "out.npz").exists()


def test_cli_missing_input(tmp_path):
  with pytest.raises(SystemExit, match="fid_weights"):
    convert.main(["--input", str(tmp_path / "absent.pth"), "--output", str(tmp_path / "out.npz")])


def test_cli_converts_a_torch_checkpoint(tmp_path, capsys, state_dict, variables):
  torch = pytest.importorskip("torch")
  checkpoint = tmp_path / CHECKPOINT_NAME
  torch.save({name: torch.from_numpy(value) for name, value in state_dict.items()}, checkpoint)
  convert.main(["--input", str(checkpoint), "--output", str(tmp_path / "fid_inception.npz")])
  loaded = load_inception_variables(tmp_path / "fid_inception.npz")
  jax.tree.map(np.testing.assert_array_equal, loaded, variables)
  assert "does not start with 6726825d" in capsys.readouterr().out   # not the published file


# --------------------------------------------------------------------------- weights file

def test_round_trip(tmp_path, variables, images, outputs):
  path = tmp_path / "fid_inception.npz"
  save_inception_variables(path, variables)
  loaded = load_inception_variables(path)
  jax.tree.map(np.testing.assert_array_equal, loaded, variables)
  features, logits = inception.make_inception_fn(loaded, batch_size=2, module=SMALL)(images)
  np.testing.assert_array_equal(features, outputs[0])
  np.testing.assert_array_equal(logits, outputs[1])


def _write(path, flat):
  with open(path, "wb") as f:
    np.savez(f, **flat)


def test_missing_file_says_where_to_get_the_checkpoint(tmp_path):
  with pytest.raises(InceptionWeightsError) as error:
    load_inception_variables(tmp_path / "fid_inception.npz")
  message = str(error.value)
  assert isinstance(error.value, ValueError)
  for part in ["fid_inception.npz", CHECKPOINT_NAME, "mseitzer/pytorch-fid/releases",
               'pip install -e ".[convert]"', "python -m bdbounds.tools.convert_fid_inception"]:
    assert part in message


def test_unreadable_file(tmp_path):
  path = tmp_path / "fid_inception.npz"
  path.write_text("not an npz")
  with pytest.raises(InceptionWeightsError, match="cannot read"):
    load_inception_variables(path)
  with open(path, "wb") as f:
    np.save(f, np.zeros(3))   # one .npy array
  with pytest.raises(InceptionWeightsError, match="single array"):
    load_inception_variables(path)


def test_wrong_shape_names_the_key(tmp_path, variables):
  flat = flatten_variables(variables)
  key = "params/Mixed_6b/branch7x7_2/conv/kernel"
  flat[key] = flat[key].transpose(1, 0, 2, 3)   # (7, 1) where (1, 7) belongs
  _write(tmp_path / "bad.npz", flat)
  with pytest.raises(InceptionWeightsError) as error:
    load_inception_variables(tmp_path / "bad.npz")
  message = str(error.value)
  for part in [key, "(7, 1, 128, 128)", "(1, 7, 128, 128)", CHECKPOINT_NAME,
               "convert_fid_inception"]:
    assert part in message


def test_missing_and_unexpected_keys(tmp_path, variables):
  flat = flatten_variables(variables)
  del flat["batch_stats/Mixed_5b/branch_pool/bn/var"]
  _write(tmp_path / "missing.npz", flat)
  with pytest.raises(InceptionWeightsError, match="batch_stats/Mixed_5b/branch_pool/bn/var"):
    load_inception_variables(tmp_path / "missing.npz")
  flat = dict(flatten_variables(variables), extra=np.zeros(3, np.float32))
  _write(tmp_path / "extra.npz", flat)
  with pytest.raises(InceptionWeightsError, match="extra is unexpected"):
    load_inception_variables(tmp_path / "extra.npz")


def test_save_refuses_other_variables(tmp_path, variables):
  flat = flatten_variables(variables)
  del flat["params/fc/bias"]
  with pytest.raises(InceptionWeightsError, match="params/fc/bias"):
    save_inception_variables(tmp_path / "out.npz", unflatten_variables(flat))
  assert not list(tmp_path.iterdir())

