import jax
import pytest


@pytest.fixture
def x64():
  """Run one test in float64 (identities need it); the flag is restored afterwards."""
  with jax.enable_x64(True):
    yield


@pytest.fixture(params=["jit", "nojit"])
def variant(request):
  """Each test using it runs twice: under `jax.jit` and eagerly (`chex.variants` for pytest)."""
  return jax.jit if request.param == "jit" else (lambda fn: fn)
