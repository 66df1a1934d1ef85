import os

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=true")
os.environ.setdefault("MPLBACKEND", "Agg")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

# The JPEG copy of CIFAR-10 that this project keeps next to its checkout (../shared/data/).
# Tests may know the checkout layout; the library is always given the path.
SHARED_CIFAR10_JPEG = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10_jpeg.npz"


@pytest.fixture
def cifar10_jpeg_path() -> Path:
    """Path of the shared CIFAR-10 JPEG ``.npz``; skips the test when it is absent."""
    if not SHARED_CIFAR10_JPEG.is_file():
        pytest.skip(f"{SHARED_CIFAR10_JPEG} not present")
    return SHARED_CIFAR10_JPEG
