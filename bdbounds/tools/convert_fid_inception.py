"""Converts pytorch-fid's FID Inception checkpoint to the .npz that `load_inception_variables`
(bdbounds.evaluators.inception_weights) reads.

    pip install -e ".[convert]"    # PyTorch, only to read the .pth
    python -m bdbounds.tools.convert_fid_inception \\
        --input pt_inception-2015-12-05-6726825d.pth --output fid_inception.npz

Download the checkpoint by hand from pytorch-fid's GitHub release 'fid_weights'; nothing here
goes online. `convert_state_dict` is the mapping itself, on NumPy arrays:

    <layer>.conv.weight [out, in, kh, kw]  → params/<layer>/conv/kernel [kh, kw, in, out]
    <layer>.bn.weight, <layer>.bn.bias     → params/<layer>/bn/scale, params/<layer>/bn/bias
    <layer>.bn.running_mean, running_var   → batch_stats/<layer>/bn/mean, batch_stats/<layer>/bn/var
    fc.weight [1008, 2048], fc.bias        → params/fc/kernel [2048, 1008], params/fc/bias
    <layer>.bn.num_batches_tracked         → dropped (a training counter)

with "." in <layer> (e.g. `Mixed_5b.branch5x5_1`) becoming "/".
"""

import argparse
import hashlib
import os
import re
from typing import Mapping

import numpy as np

from bdbounds.evaluators import inception_weights

INSTALL_HINT = 'pip install -e ".[convert]"'
NAME_DIGEST = "6726825d"   # the digest in the checkpoint's published name

# PyTorch suffix, Flax collection, Flax suffix, PyTorch → Flax array, Flax → PyTorch shape.
_RULES = (
    ("conv.weight", "params", "conv/kernel",
     lambda w: w.transpose(2, 3, 1, 0), lambda s: (s[3], s[2], s[0], s[1])),
    ("bn.weight", "params", "bn/scale", lambda w: w, lambda s: s),
    ("bn.bias", "params", "bn/bias", lambda w: w, lambda s: s),
    ("bn.running_mean", "batch_stats", "bn/mean", lambda w: w, lambda s: s),
    ("bn.running_var", "batch_stats", "bn/var", lambda w: w, lambda s: s),
)
# The classifier: a Linear's weight is [out, in], a Dense kernel [in, out].
_FC_RULES = (
    ("fc.weight", "params/fc/kernel", lambda w: w.T, lambda s: (s[1], s[0])),
    ("fc.bias", "params/fc/bias", lambda w: w, lambda s: s),
)


def _flax_key(torch_key):
  """`(flax key, PyTorch → Flax array map)` of a PyTorch name, or None if it has no place."""
  for name, key, to_flax, _ in _FC_RULES:
    if torch_key == name:
      return key, to_flax
  for suffix, collection, flax_suffix, to_flax, _ in _RULES:
    if torch_key.endswith("." + suffix):
      layer = torch_key[:-len(suffix) - 1].replace(".", "/")
      return f"{collection}/{layer}/{flax_suffix}", to_flax
  return None


def expected_state_dict_shapes() -> dict[str, tuple[int, ...]]:
  """PyTorch name → shape of every entry the checkpoint must hold (num_batches_tracked aside)."""
  shapes = {}
  for key, shape in inception_weights.expected_variable_shapes().items():
    for name, fc_key, _, to_torch in _FC_RULES:
      if key == fc_key:
        shapes[name] = to_torch(shape)
    for suffix, collection, flax_suffix, _, to_torch in _RULES:
      match = re.fullmatch(f"{collection}/(.+)/{flax_suffix}", key)
      if match:
        shapes[f"{match.group(1).replace('/', '.')}.{suffix}"] = to_torch(shape)
  return shapes


def convert_state_dict(state_dict: Mapping[str, np.ndarray]) -> dict:
  """pytorch-fid's FID Inception state dict (arrays) → `{"params", "batch_stats"}` for
  `build_fid_inception()`; raises `InceptionWeightsError` naming the first missing,
  unexpected or mis-shaped entries."""
  state_dict = {name: np.asarray(value) for name, value in state_dict.items()
                if not name.endswith(".num_batches_tracked")}
  problems = inception_weights.shape_mismatches(
      {name: value.shape for name, value in state_dict.items()}, expected_state_dict_shapes())
  if problems:
    raise inception_weights.InceptionWeightsError(
        "not the state dict of pytorch-fid's FID Inception: "
        f"{inception_weights.summarise_problems(problems)}. "
        f"Convert {inception_weights.CHECKPOINT_NAME} (1008 classes, no auxiliary head), "
        "not torchvision's ImageNet Inception-v3.")
  flat = {}
  for name, value in state_dict.items():
    key, to_flax = _flax_key(name)
    flat[key] = np.ascontiguousarray(to_flax(value.astype(np.float32)))
  return inception_weights.unflatten_variables(flat)


def read_torch_checkpoint(path: str) -> dict[str, np.ndarray]:
  """The state dict in a .pth file, as NumPy arrays; needs PyTorch."""
  try:
    import torch
  except ImportError:
    raise SystemExit(f"Reading a PyTorch checkpoint needs PyTorch: {INSTALL_HINT}") from None
  # weights_only: tensors and containers only, no arbitrary unpickling.
  state_dict = torch.load(path, map_location="cpu", weights_only=True)
  if not isinstance(state_dict, Mapping):
    raise inception_weights.InceptionWeightsError(
        f"{path} holds a {type(state_dict).__name__}, not a state dict; expected "
        f"{inception_weights.CHECKPOINT_NAME}")
  return {name: value.detach().cpu().numpy() if torch.is_tensor(value) else value
          for name, value in state_dict.items()}


def _sha256(path):
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(
      prog="python -m bdbounds.tools.convert_fid_inception",
      description=(f"Convert pytorch-fid's {inception_weights.CHECKPOINT_NAME} "
                   "to a .npz of Flax variables."))
  parser.add_argument("--input", required=True,
                      help=f"the PyTorch checkpoint, {inception_weights.CHECKPOINT_NAME}")
  parser.add_argument("--output", required=True, help="the .npz to write, e.g. fid_inception.npz")
  args = parser.parse_args(argv)
  if not os.path.isfile(args.input):
    raise SystemExit(f"{args.input} not found. {inception_weights.conversion_instructions(args.output)}")
  digest = _sha256(args.input)
  # torch.hub names a file "<name>-<first hex digits of its SHA-256>.pth". Only a warning: the
  # mapping below checks every name and shape anyway.
  if not digest.startswith(NAME_DIGEST):
    print(f"warning: the SHA-256 of {args.input} is {digest}, which does not start with "
          f"{NAME_DIGEST} as the published name {inception_weights.CHECKPOINT_NAME} says")
  try:
    variables = convert_state_dict(read_torch_checkpoint(args.input))
  except inception_weights.InceptionWeightsError as error:
    raise SystemExit(f"{args.input}: {error}") from None
  inception_weights.save_inception_variables(args.output, variables)
  count = sum(value.size for value in inception_weights.flatten_variables(variables).values())
  print(f"wrote {args.output}: {count} numbers from {args.input} (SHA-256 {digest})")


if __name__ == "__main__":
  main()
