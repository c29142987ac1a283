"""FID Inception: the Flax network against an independent NumPy transcription of pytorch-fid's
forward pass (random weights, PyTorch layouts), its layers against pytorch-fid's, the resize, and
batching. The slow test runs pytorch-fid itself where it is installed. The converter and the
weights file are tested in tests/evaluators/test_inception_weights.py.

The real checkpoint is not available here, so no test asserts its outputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bdbounds.models import inception
from bdbounds.tools import convert_fid_inception as convert

# --------------------------------------------------------------------------- pytorch-fid's layers

# Every BasicConv2d of pytorch-fid's FID Inception (torchvision's constructors, patched blocks):
# PyTorch name -> (in, out, (kh, kw), stride, (pad_h, pad_w)). Written from those sources, not
# from the Flax module, so that the module's structure is checked against them.


def _pair(v):
  return (v, v) if isinstance(v, int) else v


def _conv(cin, cout, kernel=1, stride=1, padding=0):
  return (cin, cout, _pair(kernel), stride, _pair(padding))


def _block_a(cin, pool_features):
  return {"branch1x1": _conv(cin, 64), "branch5x5_1": _conv(cin, 48),
          "branch5x5_2": _conv(48, 64, 5, padding=2), "branch3x3dbl_1": _conv(cin, 64),
          "branch3x3dbl_2": _conv(64, 96, 3, padding=1),
          "branch3x3dbl_3": _conv(96, 96, 3, padding=1),
          "branch_pool": _conv(cin, pool_features)}


def _block_b(cin):
  return {"branch3x3": _conv(cin, 384, 3, stride=2), "branch3x3dbl_1": _conv(cin, 64),
          "branch3x3dbl_2": _conv(64, 96, 3, padding=1),
          "branch3x3dbl_3": _conv(96, 96, 3, stride=2)}


def _block_c(cin, c7):
  return {"branch1x1": _conv(cin, 192), "branch7x7_1": _conv(cin, c7),
          "branch7x7_2": _conv(c7, c7, (1, 7), padding=(0, 3)),
          "branch7x7_3": _conv(c7, 192, (7, 1), padding=(3, 0)),
          "branch7x7dbl_1": _conv(cin, c7),
          "branch7x7dbl_2": _conv(c7, c7, (7, 1), padding=(3, 0)),
          "branch7x7dbl_3": _conv(c7, c7, (1, 7), padding=(0, 3)),
          "branch7x7dbl_4": _conv(c7, c7, (7, 1), padding=(3, 0)),
          "branch7x7dbl_5": _conv(c7, 192, (1, 7), padding=(0, 3)),
          "branch_pool": _conv(cin, 192)}


def _block_d(cin):
  return {"branch3x3_1": _conv(cin, 192), "branch3x3_2": _conv(192, 320, 3, stride=2),
          "branch7x7x3_1": _conv(cin, 192),
          "branch7x7x3_2": _conv(192, 192, (1, 7), padding=(0, 3)),
          "branch7x7x3_3": _conv(192, 192, (7, 1), padding=(3, 0)),
          "branch7x7x3_4": _conv(192, 192, 3, stride=2)}


def _block_e(cin):
  return {"branch1x1": _conv(cin, 320), "branch3x3_1": _conv(cin, 384),
          "branch3x3_2a": _conv(384, 384, (1, 3), padding=(0, 1)),
          "branch3x3_2b": _conv(384, 384, (3, 1), padding=(1, 0)),
          "branch3x3dbl_1": _conv(cin, 448), "branch3x3dbl_2": _conv(448, 384, 3, padding=1),
          "branch3x3dbl_3a": _conv(384, 384, (1, 3), padding=(0, 1)),
          "branch3x3dbl_3b": _conv(384, 384, (3, 1), padding=(1, 0)),
          "branch_pool": _conv(cin, 192)}


# (name, kind, block's layers, output channels, output side for a 299×299 input)
BLOCKS = [
    ("Mixed_5b", "A", _block_a(192, 32), 256, 35),
    ("Mixed_5c", "A", _block_a(256, 64), 288, 35),
    ("Mixed_5d", "A", _block_a(288, 64), 288, 35),
    ("Mixed_6a", "B", _block_b(288), 768, 17),
    ("Mixed_6b", "C", _block_c(768, 128), 768, 17),
    ("Mixed_6c", "C", _block_c(768, 160), 768, 17),
    ("Mixed_6d", "C", _block_c(768, 160), 768, 17),
    ("Mixed_6e", "C", _block_c(768, 192), 768, 17),
    ("Mixed_7a", "D", _block_d(768), 1280, 8),
    ("Mixed_7b", "E_1", _block_e(1280), 2048, 8),
    ("Mixed_7c", "E_2", _block_e(2048), 2048, 8),
]
STEM = {"Conv2d_1a_3x3": _conv(3, 32, 3, stride=2), "Conv2d_2a_3x3": _conv(32, 32, 3),
        "Conv2d_2b_3x3": _conv(32, 64, 3, padding=1), "Conv2d_3b_1x1": _conv(64, 80),
        "Conv2d_4a_3x3": _conv(80, 192, 3)}
LAYERS = dict(STEM)
for _name, _, _layers, _, _ in BLOCKS:
  LAYERS.update({f"{_name}.{branch}": spec for branch, spec in _layers.items()})

# A side at which every layer is exercised with its padding: the 8×8 stage is 3×3 here.
SIDE = 139


def table_state_dict_shapes():
  shapes = {"fc.weight": (inception.NUM_CLASSES, inception.NUM_FEATURES),
            "fc.bias": (inception.NUM_CLASSES,)}
  for name, (cin, cout, kernel, _, _) in LAYERS.items():
    shapes[f"{name}.conv.weight"] = (cout, cin) + kernel
    for stat in ("weight", "bias", "running_mean", "running_var"):
      shapes[f"{name}.bn.{stat}"] = (cout,)
  return shapes


def fake_state_dict(seed=0):
  """A PyTorch-style state dict with pytorch-fid's names and layouts, filled at random so
  that activations keep unit scale (He-scaled convs, batch norms near the identity)."""
  rng = np.random.default_rng(seed)
  normal = lambda shape, scale: (scale * rng.standard_normal(shape)).astype(np.float32)
  uniform = lambda n: rng.uniform(0.5, 1.5, n).astype(np.float32)
  state_dict = {}
  for name, shape in table_state_dict_shapes().items():
    if name.endswith("conv.weight"):
      state_dict[name] = normal(shape, np.sqrt(2.0 / np.prod(shape[1:])))
    elif name.endswith(("bn.weight", "bn.running_var")):
      state_dict[name] = uniform(shape[0])
    elif name == "fc.weight":
      state_dict[name] = normal(shape, 1.0 / np.sqrt(shape[1]))
    else:
      state_dict[name] = normal(shape, 0.1)
    if name.endswith("bn.running_var"):   # as every PyTorch >= 0.4 state dict has
      state_dict[name.replace("running_var", "num_batches_tracked")] = np.array(7, np.int64)
  return state_dict


# --------------------------------------------------------------------------- NumPy reference

# pytorch-fid's forward pass in NCHW and float64, on the PyTorch-style state dict.

def _windows(x, size, stride, padding, fill):
  x = np.pad(x, ((0, 0), (0, 0), padding[:1] * 2, padding[1:] * 2), constant_values=fill)
  out_h = (x.shape[2] - size[0]) // stride + 1
  out_w = (x.shape[3] - size[1]) // stride + 1
  return [x[:, :, i:i + stride * (out_h - 1) + 1:stride, j:j + stride * (out_w - 1) + 1:stride]
          for i in range(size[0]) for j in range(size[1])]


def ref_conv(sd, name, x):
  """BasicConv2d: conv without bias, batch norm with the running statistics, ReLU."""
  _, _, kernel, stride, padding = LAYERS[name]
  weight = sd[f"{name}.conv.weight"].astype(np.float64)
  taps = [(i, j) for i in range(kernel[0]) for j in range(kernel[1])]
  y = sum(np.einsum("nchw,oc->nohw", patch, weight[:, :, i, j], optimize=True)
          for (i, j), patch in zip(taps, _windows(x, kernel, stride, padding, 0.0)))
  stat = lambda key: sd[f"{name}.bn.{key}"].astype(np.float64)[None, :, None, None]
  y = (y - stat("running_mean")) / np.sqrt(stat("running_var") + 1e-3) * stat("weight") + stat("bias")
  return np.maximum(y, 0.0)


def ref_max_pool(x, stride, padding=0):
  return np.max(_windows(x, (3, 3), stride, (padding, padding), -np.inf), axis=0)


def ref_avg_pool_exclude_pad(x):
  total = np.sum(_windows(x, (3, 3), 1, (1, 1), 0.0), axis=0)
  count = np.sum(_windows(np.ones_like(x[:1, :1]), (3, 3), 1, (1, 1), 0.0), axis=0)
  return total / count


def ref_block(sd, name, kind, x):
  c = lambda branch, y: ref_conv(sd, f"{name}.{branch}", y)
  if kind == "A":
    return np.concatenate([
        c("branch1x1", x),
        c("branch5x5_2", c("branch5x5_1", x)),
        c("branch3x3dbl_3", c("branch3x3dbl_2", c("branch3x3dbl_1", x))),
        c("branch_pool", ref_avg_pool_exclude_pad(x))], axis=1)
  if kind == "B":
    return np.concatenate([
        c("branch3x3", x),
        c("branch3x3dbl_3", c("branch3x3dbl_2", c("branch3x3dbl_1", x))),
        ref_max_pool(x, 2)], axis=1)
  if kind == "C":
    return np.concatenate([
        c("branch1x1", x),
        c("branch7x7_3", c("branch7x7_2", c("branch7x7_1", x))),
        c("branch7x7dbl_5", c("branch7x7dbl_4", c("branch7x7dbl_3", c("branch7x7dbl_2",
                                                                      c("branch7x7dbl_1", x))))),
        c("branch_pool", ref_avg_pool_exclude_pad(x))], axis=1)
  if kind == "D":
    return np.concatenate([
        c("branch3x3_2", c("branch3x3_1", x)),
        c("branch7x7x3_4", c("branch7x7x3_3", c("branch7x7x3_2", c("branch7x7x3_1", x)))),
        ref_max_pool(x, 2)], axis=1)
  branch3x3 = c("branch3x3_1", x)
  branch3x3dbl = c("branch3x3dbl_2", c("branch3x3dbl_1", x))
  pooled = ref_max_pool(x, 1, padding=1) if kind == "E_2" else ref_avg_pool_exclude_pad(x)
  return np.concatenate([
      c("branch1x1", x),
      c("branch3x3_2a", branch3x3), c("branch3x3_2b", branch3x3),
      c("branch3x3dbl_3a", branch3x3dbl), c("branch3x3dbl_3b", branch3x3dbl),
      c("branch_pool", pooled)], axis=1)


def ref_forward(sd, images):
  """`images [N, H, W, 3]` at the network's input size → (pool3 features, logits)."""
  x = images.transpose(0, 3, 1, 2).astype(np.float64)
  x = ref_conv(sd, "Conv2d_2b_3x3", ref_conv(sd, "Conv2d_2a_3x3", ref_conv(sd, "Conv2d_1a_3x3", x)))
  x = ref_max_pool(x, 2)
  x = ref_max_pool(ref_conv(sd, "Conv2d_4a_3x3", ref_conv(sd, "Conv2d_3b_1x1", x)), 2)
  for name, kind, _, _, _ in BLOCKS:
    x = ref_block(sd, name, kind, x)
  features = x.mean(axis=(2, 3))
  return features, features @ sd["fc.weight"].T.astype(np.float64) + sd["fc.bias"]


def ref_resize(images, size):
  """PyTorch's bilinear resize with align_corners=False, from its source-index formula:
  src = (dst + 0.5) · in / out − 0.5, clamped below at 0; the upper neighbour clamped to the
  last pixel."""
  def matrix(n_in, n_out):
    src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
    low = np.floor(src).astype(int)
    high = np.minimum(low + 1, n_in - 1)
    weights = np.zeros((n_out, n_in))
    np.add.at(weights, (np.arange(n_out), low), 1.0 - (src - low))
    np.add.at(weights, (np.arange(n_out), high), src - low)
    return weights
  rows, cols = matrix(images.shape[1], size), matrix(images.shape[2], size)
  return np.einsum("ph,nhwc,qw->npqc", rows, images.astype(np.float64), cols, optimize=True)


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def state_dict():
  return fake_state_dict()


@pytest.fixture(scope="module")
def variables(state_dict):
  return convert.convert_state_dict(state_dict)


@pytest.fixture(scope="module")
def images():
  return np.random.default_rng(1).uniform(-1.0, 1.0, (2, SIDE, SIDE, 3)).astype(np.float32)


SMALL = inception.build_fid_inception(resize_input=False)


@pytest.fixture(scope="module")
def outputs(variables, images):
  # Every run of the network below uses this shape and batch size: one compilation.
  return inception.make_inception_fn(variables, batch_size=2, module=SMALL)(images)


# --------------------------------------------------------------------------- structure

def test_module_has_exactly_pytorch_fids_layers():
  assert convert.expected_state_dict_shapes() == table_state_dict_shapes()


def test_parameter_count():
  shapes = jax.eval_shape(inception.build_fid_inception().init, jax.random.PRNGKey(0),
                          jnp.zeros((1, 32, 32, 3)))
  count = lambda tree: sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))
  convs = sum(cin * cout * kh * kw for cin, cout, (kh, kw), _, _ in LAYERS.values())
  channels = sum(cout for _, cout, _, _, _ in LAYERS.values())
  fc = inception.NUM_FEATURES * inception.NUM_CLASSES + inception.NUM_CLASSES
  assert count(shapes["params"]) == convs + 2 * channels + fc   # 23,850,960
  assert count(shapes["batch_stats"]) == 2 * channels


def test_block_shapes_at_299():
  module = inception.build_fid_inception()
  x = jax.ShapeDtypeStruct((2, 32, 32, 1), jnp.float32)   # grey, resized to 299×299
  shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), x)
  (features, logits), state = jax.eval_shape(
      lambda v, x: module.apply(v, x, capture_intermediates=True), shapes, x)
  assert features.shape == (2, 2048) and logits.shape == (2, 1008)
  intermediates = state["intermediates"]
  stem = {"Conv2d_1a_3x3": (149, 32), "Conv2d_2a_3x3": (147, 32), "Conv2d_2b_3x3": (147, 64),
          "Conv2d_3b_1x1": (73, 80), "Conv2d_4a_3x3": (71, 192)}
  expected = dict(stem, **{name: (side, channels) for name, _, _, channels, side in BLOCKS})
  for name, (side, channels) in expected.items():
    assert intermediates[name]["__call__"][0].shape == (2, side, side, channels), name


def test_avg_pool_excludes_padding():
  x = np.random.default_rng(0).normal(size=(2, 5, 4, 3)).astype(np.float32)
  expected = np.zeros_like(x)
  for i in range(5):
    for j in range(4):
      expected[:, i, j] = x[:, max(i - 1, 0):i + 2, max(j - 1, 0):j + 2].mean(axis=(1, 2))
  np.testing.assert_allclose(inception.avg_pool_3x3(jnp.asarray(x)), expected, rtol=1e-6, atol=1e-6)
  # Zeros counted in would give 4/9 at the corners of a constant image.
  np.testing.assert_allclose(inception.avg_pool_3x3(jnp.ones((1, 3, 3, 1))), 1.0, rtol=1e-6)


@pytest.mark.parametrize("shape", [(32, 32), (13, 20), (400, 350)])
def test_resize_matches_pytorch_bilinear(shape):
  x = np.random.default_rng(0).uniform(-1, 1, (1, *shape, 2)).astype(np.float32)
  got = inception.resize_to_inception(jnp.asarray(x))
  # Both compute sample coordinates in float32: weights differ by ~1e-5 at coordinates ~400.
  # Another convention (align_corners=True, no half-pixel shift) would differ by ~0.1.
  np.testing.assert_allclose(got, ref_resize(x, inception.INCEPTION_SIZE), rtol=0, atol=1e-4)


# --------------------------------------------------------------------------- numbers

def test_matches_numpy_reference(state_dict, images, outputs):
  features, logits = outputs
  ref_features, ref_logits = ref_forward(state_dict, images)
  assert features.shape == (2, 2048) and logits.shape == (2, 1008)
  assert 0.1 < np.std(ref_features) < 10   # the random weights keep activations at unit scale
  np.testing.assert_allclose(features, ref_features, rtol=1e-4, atol=1e-5 * np.abs(ref_features).max())
  np.testing.assert_allclose(logits, ref_logits, rtol=1e-4, atol=1e-5 * np.abs(ref_logits).max())


def test_batches_padding_grey_and_range(variables, images, outputs):
  fn = inception.make_inception_fn(variables, batch_size=2, module=SMALL)
  features, logits = fn(np.concatenate([images, images[:1]]))   # batches of 2 and 1 (padded)
  for got, want in zip((features, logits), outputs):
    np.testing.assert_allclose(got, np.concatenate([want, want[:1]]), rtol=1e-5, atol=1e-6)
  grey = images[..., :1]
  grey_features, _ = fn(jnp.asarray(grey))
  np.testing.assert_array_equal(grey_features, fn(np.repeat(grey, 3, axis=-1))[0])
  with pytest.raises(ValueError, match=r"\[-1, 1\]"):
    fn(127.5 * (images + 1))
  with pytest.raises(ValueError, match="C = 1 or 3"):
    fn(images[..., :2])


# --------------------------------------------------------------------------- pytorch-fid itself

@pytest.mark.slow
@pytest.mark.parametrize("shape", [(32, 32), (400, 350)])   # resized up, and down
def test_matches_pytorch_fid(state_dict, monkeypatch, shape):
  """pytorch-fid's own InceptionV3 (resize, scaling, patched blocks) with the random weights
  loaded strictly (`pip install pytorch-fid` to run it): features and logits of two images."""
  torch = pytest.importorskip("torch")
  fid = pytest.importorskip("pytorch_fid.inception")
  tensors = {name: torch.from_numpy(value) for name, value in state_dict.items()}
  monkeypatch.setattr(fid, "load_state_dict_from_url", lambda *args, **kwargs: tensors)
  built = []
  original = fid.fid_inception_v3
  monkeypatch.setattr(fid, "fid_inception_v3", lambda: built.append(original()) or built[-1])
  model = fid.InceptionV3([fid.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
  x = np.random.default_rng(2).uniform(-1, 1, (2, *shape, 3)).astype(np.float32)
  with torch.no_grad():
    # pytorch-fid takes [0, 1] NCHW and maps it to [-1, 1] after resizing; both steps are linear.
    pool3 = model(torch.from_numpy((x + 1) / 2).permute(0, 3, 1, 2))[0].flatten(1)
    ref_logits = built[0].fc(pool3).numpy()
  ref_features = pool3.numpy()
  variables = convert.convert_state_dict(state_dict)
  features, logits = inception.make_inception_fn(variables, batch_size=2)(x)
  np.testing.assert_allclose(features, ref_features, rtol=1e-4, atol=1e-5 * np.abs(ref_features).max())
  np.testing.assert_allclose(logits, ref_logits, rtol=1e-4, atol=1e-5 * np.abs(ref_logits).max())

