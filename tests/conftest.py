import os
import shutil
import tempfile

# LLVM at -O0 (XLA's CPU backend): the suite's CPU time is mostly compiling small programs, which
# this halves; running them is slower, but they are tiny. The same IEEE arithmetic; only the
# rounding of a few results differs from the default -O2 (e.g. where -O2 fuses a multiply-add).
# Tests that start subprocesses pass these flags on (adding the device count where they need
# one). To run the suite at XLA's default level: XLA_FLAGS= python -m pytest ...
TEST_XLA_FLAGS = "--xla_cpu_multi_thread_eigen=true --xla_backend_optimization_level=0"
os.environ.setdefault("XLA_FLAGS", TEST_XLA_FLAGS)
os.environ.setdefault("MPLBACKEND", "Agg")

# One persistent compilation cache for the test session (issue 26: the suite's time is mostly
# XLA compiling the same small programs again: the tiny CNN-9's train/eval/energy steps and
# its initializers, built afresh by every run, every test and every subprocess). The first
# process to load this file (pytest, or the xdist controller) makes a temporary folder;
# the xdist workers and every subprocess a test starts inherit the variable, so a program
# compiled once is read back everywhere else. A cache hit is the same executable (the key is
# the program, its compile options and the jax/XLA version), so what the tests prove is
# unchanged; the folder is removed at the end of the session, so every session starts cold
# (timings measured from a clean clone stay honest). A JAX_COMPILATION_CACHE_DIR set by the
# user is used as it is, and kept.
_CACHE_VARIABLE = "JAX_COMPILATION_CACHE_DIR"
_OWN_CACHE = None
if _CACHE_VARIABLE not in os.environ:
    _OWN_CACHE = tempfile.mkdtemp(prefix="mhe_jax_tests_xla_cache_")
    os.environ[_CACHE_VARIABLE] = _OWN_CACHE
# Every program, however small (jax's default, 1 s, skips most of them): reading one back costs
# a fraction of compiling it, also for the op-by-op programs of eager code, which both xdist
# workers and every fresh jit(lambda) would compile again.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

# The JPEG copy of CIFAR-10 that this project keeps next to its checkout (../shared/data/).
# Tests may know the checkout layout; the library is always given the path.
SHARED_CIFAR10_JPEG = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10_jpeg.npz"


def pytest_unconfigure(config):
    if _OWN_CACHE is not None:  # made by this process (xdist workers inherit the controller's)
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


@pytest.fixture
def cifar10_jpeg_path() -> Path:
    """Path of the shared CIFAR-10 JPEG ``.npz``; skips the test when it is absent."""
    if not SHARED_CIFAR10_JPEG.is_file():
        pytest.skip(f"{SHARED_CIFAR10_JPEG} not present")
    return SHARED_CIFAR10_JPEG
