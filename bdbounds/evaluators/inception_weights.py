"""The FID Inception's weights file: reading, writing and checking the .npz of its variables.

Nothing is downloaded: `load_inception_variables` reads a .npz made once, by
`python -m bdbounds.tools.convert_fid_inception`, from the checkpoint pytorch-fid publishes
(pt_inception-2015-12-05-6726825d.pth). The network (`bdbounds.models.inception`) names its
submodules after the PyTorch state dict, so the file's keys are the variables' paths joined by "/":

    params/<layer>/conv/kernel       [kh, kw, in, out]   PyTorch `<layer>.conv.weight` (OIHW)
    params/<layer>/bn/scale          [out]               `<layer>.bn.weight`
    params/<layer>/bn/bias           [out]               `<layer>.bn.bias`
    batch_stats/<layer>/bn/mean      [out]               `<layer>.bn.running_mean`
    batch_stats/<layer>/bn/var       [out]               `<layer>.bn.running_var`
    params/fc/kernel [2048, 1008], params/fc/bias [1008] `fc.weight` transposed, `fc.bias`

where <layer> is `Conv2d_1a_3x3`, ..., or a block's branch such as `Mixed_5b/branch5x5_1`.
"""

import functools
import os
import zipfile
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from bdbounds import writers
from bdbounds.models import inception

__all__ = [
    "CHECKPOINT_NAME", "CHECKPOINT_URL", "InceptionWeightsError", "conversion_instructions",
    "expected_variable_shapes", "flatten_variables", "load_inception_variables",
    "save_inception_variables", "shape_mismatches", "summarise_problems", "unflatten_variables",
]

CHECKPOINT_NAME = "pt_inception-2015-12-05-6726825d.pth"
CHECKPOINT_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                  + CHECKPOINT_NAME)


class InceptionWeightsError(ValueError):
  """The Inception weights are missing, unreadable, or not those of the FID Inception."""


def conversion_instructions(output: str = "fid_inception.npz") -> str:
  """How to make the weights file: where the checkpoint is published and how to convert it."""
  return (f"Download {CHECKPOINT_NAME} (pytorch-fid's release 'fid_weights', {CHECKPOINT_URL}) "
          f"and convert it once: pip install -e \".[convert]\" && python -m "
          f"bdbounds.tools.convert_fid_inception --input {CHECKPOINT_NAME} --output {output}")


def flatten_variables(variables: Mapping) -> dict[str, np.ndarray]:
  """`{"params": {...}, "batch_stats": {...}}` → `{"params/Mixed_5b/.../kernel": array}`."""
  flat = traverse_util.flatten_dict(jax.tree.map(np.asarray, dict(variables)), sep="/")
  return dict(flat)


def unflatten_variables(flat: Mapping[str, Any]) -> dict:
  """The inverse of `flatten_variables`."""
  return traverse_util.unflatten_dict(dict(flat), sep="/")


@functools.lru_cache(maxsize=None)
def _expected_shapes() -> tuple[tuple[str, tuple[int, ...]], ...]:
  # Abstract init: shapes only, nothing computed. They do not depend on the module's fields.
  images = jax.ShapeDtypeStruct((1, inception.INCEPTION_SIZE, inception.INCEPTION_SIZE, 3), jnp.float32)
  shapes = jax.eval_shape(inception.FIDInceptionV3().init, jax.random.PRNGKey(0), images)
  flat = traverse_util.flatten_dict(dict(shapes), sep="/")
  return tuple((key, tuple(leaf.shape)) for key, leaf in flat.items())


def expected_variable_shapes() -> dict[str, tuple[int, ...]]:
  """Every key of the weights file and its array's shape, from the module itself."""
  return dict(_expected_shapes())


def shape_mismatches(found: Mapping[str, Sequence[int]],
                     expected: Mapping[str, Sequence[int]]) -> list[str]:
  """One line per missing key, unexpected key or shape mismatch, in `expected`'s order."""
  problems = []
  for key, shape in expected.items():
    if key not in found:
      problems.append(f"{key} is missing (expected shape {tuple(shape)})")
    elif tuple(found[key]) != tuple(shape):
      problems.append(f"{key} has shape {tuple(found[key])}, expected {tuple(shape)}")
  problems += [f"{key} is unexpected" for key in found if key not in expected]
  return problems


def summarise_problems(problems: Sequence[str], limit: int = 3) -> str:
  """The first `limit` problems joined, and how many more there are."""
  text = "; ".join(problems[:limit])
  return text + (f"; and {len(problems) - limit} more" if len(problems) > limit else "")


def _check_flat(flat: Mapping[str, np.ndarray], source: str, remedy: str) -> None:
  problems = shape_mismatches({k: np.shape(v) for k, v in flat.items()},
                              expected_variable_shapes())
  problems += [f"{key} has dtype {v.dtype}, expected floating point" for key, v in flat.items()
               if not np.issubdtype(np.asarray(v).dtype, np.floating)]
  if problems:
    raise InceptionWeightsError(f"{source} does not hold the FID Inception's variables: "
                                f"{summarise_problems(problems)}. {remedy}")


def load_inception_variables(path: str | os.PathLike) -> dict:
  """`{"params", "batch_stats"}` of the FID Inception from a .npz written by
  `save_inception_variables`; raises `InceptionWeightsError` on a missing, unreadable or
  mismatched file, with what to do about it."""
  path = os.fspath(path)
  remedy = "Recreate it. " + conversion_instructions(path)
  if not os.path.isfile(path):
    raise InceptionWeightsError(f"Inception weights file {path!r} not found. "
                                + conversion_instructions(path))
  try:
    npz = np.load(path, allow_pickle=False)
    if not isinstance(npz, np.lib.npyio.NpzFile):
      raise ValueError("it holds a single array, not named arrays")
    with npz:
      flat = {key: npz[key] for key in npz.files}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
    raise InceptionWeightsError(f"cannot read {path!r} as a .npz file ({error}). {remedy}") from error
  _check_flat(flat, repr(path), remedy)
  return unflatten_variables({key: jnp.asarray(value, jnp.float32) for key, value in flat.items()})


def save_inception_variables(path: str | os.PathLike, variables: Mapping) -> None:
  """Writes `variables` as a flat float32 .npz (keys in the module docstring), after checking
  that they fit the module; the file appears whole or not at all."""
  flat = flatten_variables(variables)
  _check_flat(flat, "the variables to save",
              "Save the variables of build_fid_inception(), as convert_state_dict returns them.")
  writers.write_npz(path, {key: value.astype(np.float32) for key, value in flat.items()})
