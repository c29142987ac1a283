"""The notebooks run top to bottom, offline, with a few training steps."""

import json
import os
import sys

import pytest

nbclient = pytest.importorskip("nbclient", reason="needs nbclient, nbformat and ipykernel: pip install -e '.[test]'")
nbformat = pytest.importorskip("nbformat", reason="needs nbformat: pip install -e '.[test]'")
pytest.importorskip("ipykernel", reason="needs ipykernel: pip install -e '.[test]'")
from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402  (installed with nbclient)
from jupyter_client.manager import KernelManager  # noqa: E402

NOTEBOOKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "notebooks")
KERNEL = "bdbounds-test"


def inject_parameters(nb, **params):
  """Papermill's convention: a cell after the one tagged `parameters` overrides its values."""
  index = next(i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", []))
  source = "\n".join(f"{name} = {value!r}" for name, value in params.items())
  cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
  nb.cells.insert(index + 1, cell)


def kernel_manager(tmp_path):
  """A kernel on this interpreter, whatever kernels the machine has registered."""
  spec_dir = tmp_path / "kernels" / KERNEL
  spec_dir.mkdir(parents=True)
  spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
          "display_name": KERNEL, "language": "python"}
  (spec_dir / "kernel.json").write_text(json.dumps(spec))
  specs = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")], ensure_native_kernel=False)
  return KernelManager(kernel_name=KERNEL, kernel_spec_manager=specs)


def execute(name, tmp_path, **params):
  """The notebook `notebooks/<name>` run in a fresh kernel from its own folder, `params` injected."""
  path = os.path.join(NOTEBOOKS, name)
  nb = nbformat.read(path, as_version=4)
  inject_parameters(nb, **params)
  client = nbclient.NotebookClient(nb, km=kernel_manager(tmp_path), timeout=600,
                                   resources={"metadata": {"path": NOTEBOOKS}})
  client.execute()
  return nb


def png_outputs(nb):
  return [o for cell in nb.cells for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]


@pytest.mark.parametrize("name", ["quickstart.ipynb", "images.ipynb"])
def test_committed_notebook_has_no_outputs(name):
  nb = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
  code = [cell for cell in nb.cells if cell.cell_type == "code"]
  assert all(not cell.outputs and cell.execution_count is None for cell in code)
  assert any("parameters" in cell.metadata.get("tags", []) for cell in code)


def test_quickstart_runs(tmp_path):
  workdir = str(tmp_path / "runs")
  nb = execute("quickstart.ipynb", tmp_path, NUM_STEPS=20, WORKDIR=workdir)
  for run in ("8gaussians-jacobian-latent_fisher", "8gaussians-jacobian-score_matching"):
    assert os.path.exists(os.path.join(workdir, run, "plots", "20.png"))
  assert len(png_outputs(nb)) >= 3  # the first run's plot, the density beside the samples, the second run's plot


@pytest.mark.slow  # about 40 s: runs in CI's slow pass
def test_images_runs(tmp_path):
  workdir = str(tmp_path / "runs")
  nb = execute("images.ipynb", tmp_path, PRESET="smoke", NUM_STEPS=4, WORKDIR=workdir)
  assert os.path.exists(os.path.join(workdir, "digits-smoke", "plots", "4.png"))
  text = "".join(o.get("text", "") for cell in nb.cells for o in cell.get("outputs", []))
  assert "NLL lower bound" in text
  assert len(png_outputs(nb)) >= 2  # the saved grid, the fresh grid beside the energy histogram
