"""Packaging: one version, the project URLs, absolute links on the index, a wheel that installs.

``test_wheel_installs_in_fresh_venv`` runs ``python -m build --no-isolation`` (sdist, then the
wheel from the sdist; the backend comes from the test extra, so no index is needed) and installs
the wheel with ``--no-deps`` into a fresh venv that sees the system site-packages for
jax/optax/numpy, then imports it from there (~20 s).
"""

from __future__ import annotations

import email
import email.policy
import importlib.util
import pathlib
import re
import site
import subprocess
import sys
import tarfile
import tomllib
import zipfile

import pytest

import mhe_jax

ROOT = pathlib.Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT = PYPROJECT["project"]
LINK_TARGET = re.compile(r"\]\(([^)\s]+)\)")


def _setup_module():
    spec = importlib.util.spec_from_file_location("mhe_jax_setup", ROOT / "setup.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # setup() itself only runs under __main__
    return module


def test_version_written_once():
    assert "version" not in PROJECT and "version" in PROJECT["dynamic"]
    attr = PYPROJECT["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "mhe_jax._version.__version__"
    assert mhe_jax.__version__ == mhe_jax._version.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+", mhe_jax.__version__)
    init = (ROOT / "mhe_jax" / "__init__.py").read_text(encoding="utf-8")
    assert not re.search(r"__version__\s*=", init), "the version is written in _version.py only"


def test_license_is_apache_spdx():
    assert PROJECT["license"] == "Apache-2.0"
    assert PROJECT["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert not any(c.startswith("License ::") for c in PROJECT["classifiers"])  # PEP 639
    setuptools_req = next(r for r in PYPROJECT["build-system"]["requires"] if "setuptools" in r)
    assert setuptools_req == "setuptools>=77"  # the first with SPDX license + license-files
    # The wheel test builds without isolation, so the test extra must carry the build backend.
    assert setuptools_req in PROJECT["optional-dependencies"]["test"]
    assert any(r.startswith("build>=") for r in PROJECT["optional-dependencies"]["test"])


def test_project_urls_share_one_repository_address():
    urls = PROJECT["urls"]
    assert {"Homepage", "Source", "Documentation", "Issues"} <= set(urls)
    source = urls["Source"]
    match = re.fullmatch(r"https://github\.com/([\w.-]+)/mhe_jax", source)
    assert match, source
    owner = match.group(1)
    assert urls["Homepage"] == source
    assert urls["Issues"] == source + "/issues"
    assert urls["Documentation"] == f"https://{owner.lower()}.github.io/mhe_jax/"


def test_absolute_links_rewrites_relative_targets_only():
    setup = _setup_module()
    base = "https://github.com/o/r"
    markdown = (
        "[nb](notebooks/01.ipynb) [here](./docs/x.md) ![fig](results/a.png) "
        "[web](https://x.org/p) [mail](mailto:a@b.c) [anchor](#usage)"
    )
    assert setup.absolute_links(markdown, base) == (
        "[nb](https://github.com/o/r/blob/main/notebooks/01.ipynb) "
        "[here](https://github.com/o/r/blob/main/docs/x.md) "
        "![fig](https://github.com/o/r/raw/main/results/a.png) "
        "[web](https://x.org/p) [mail](mailto:a@b.c) [anchor](#usage)"
    )
    assert setup.source_url() == PROJECT["urls"]["Source"]


def _assert_absolute(description: str) -> None:
    targets = LINK_TARGET.findall(description)
    relative = [t for t in targets if not re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:|#", t)]
    assert not relative, f"relative links in the long description: {relative}"


def test_long_description_has_absolute_links():
    description = _setup_module().long_description()
    _assert_absolute(description)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(LINK_TARGET.findall(description)) == len(LINK_TARGET.findall(readme))


def test_wheel_installs_in_fresh_venv(tmp_path):
    dist = tmp_path / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    # Without --sdist/--wheel, build makes the sdist and then the wheel from the unpacked sdist,
    # so the wheel also checks that the sdist is complete.
    (sdist,) = dist.glob("mhe_jax-*.tar.gz")
    (wheel,) = dist.glob("mhe_jax-*-py3-none-any.whl")
    version = mhe_jax._version.__version__
    assert wheel.name == f"mhe_jax-{version}-py3-none-any.whl"
    with tarfile.open(sdist) as archive:
        names = {n.split("/", 1)[1] for n in archive.getnames() if "/" in n}
    assert {"LICENSE", "README.md", "pyproject.toml", "setup.py", "mhe_jax/py.typed"} <= names

    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        info = f"mhe_jax-{version}.dist-info"
        assert "mhe_jax/py.typed" in names
        assert f"{info}/licenses/LICENSE" in names
        assert archive.read(f"{info}/licenses/LICENSE") == (ROOT / "LICENSE").read_bytes()
        assert not any(n.startswith(("tests/", "benchmarks/", "notebooks/")) for n in names)
        metadata = email.message_from_bytes(
            archive.read(f"{info}/METADATA"), policy=email.policy.compat32
        )
    assert metadata["License-Expression"] == "Apache-2.0"
    assert metadata["Version"] == version
    assert metadata["Description-Content-Type"] == "text/markdown"
    project_urls = dict(u.split(", ", 1) for u in metadata.get_all("Project-URL") or [])
    assert project_urls["Source"] == PROJECT["urls"]["Source"]
    description = str(metadata.get_payload())
    assert "## Quickstart" in description
    _assert_absolute(description)

    venv = tmp_path / "venv"
    python = _venv_seeing_this_environment(venv)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
        check=True, capture_output=True, text=True, timeout=120,
    )
    smoke = (
        "import sys, pathlib, mhe_jax, jax.numpy as jnp\n"
        "assert 'flax' not in sys.modules\n"
        "site = pathlib.Path(mhe_jax.__file__).resolve()\n"
        f"assert site.is_relative_to({str(venv.resolve())!r}), site\n"
        "assert (site.parent / 'py.typed').exists()\n"
        "e = mhe_jax.hyperspherical_energy(jnp.eye(3), s=2.0)\n"
        "assert abs(float(e) - 0.5) < 1e-6, e\n"  # all pairs at distance sqrt(2): 1/2
        "print(mhe_jax.__version__, mhe_jax.sphere.__name__)\n"
    )
    result = subprocess.run(
        [str(python), "-c", smoke], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [version, "mhe_jax.sphere"]


def _venv_seeing_this_environment(venv: pathlib.Path) -> pathlib.Path:
    """A fresh venv whose ``sys.path`` ends with the *running* interpreter's site-packages.

    ``python -m venv --system-site-packages`` made from inside a virtualenv sees the base
    interpreter's packages, not the virtualenv's (where a user following the README has jax):
    instead the new venv gets a ``.pth`` file listing this environment's site-packages folders
    as plain paths. Plain paths, not ``site.addsitedir``: the ``.pth`` files of this environment
    (an editable install of mhe_jax among them) are not processed, so the wheel installed into
    the venv is the only mhe_jax it can import.
    """
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    venv_site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True, timeout=60).stdout.strip()
    here = [p for p in dict.fromkeys(site.getsitepackages() + [site.getusersitepackages()])
            if pathlib.Path(p).is_dir()]
    (pathlib.Path(venv_site) / "_running_environment.pth").write_text("\n".join(here) + "\n")
    return python


def test_test_venv_sees_this_environment_not_the_base_interpreter(tmp_path):
    """The wheel test's venv imports jax from the environment running the tests (a user's
    virtualenv included), and no mhe_jax (the editable install's .pth is not processed)."""
    python = _venv_seeing_this_environment(tmp_path / "venv")
    code = ("import importlib.util, jax; print(jax.__file__); "
            "print(importlib.util.find_spec('mhe_jax'))")
    out = subprocess.run([str(python), "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    jax_file, spec = out.stdout.split("\n")[:2]
    import jax

    assert pathlib.Path(jax_file).resolve() == pathlib.Path(jax.__file__).resolve()
    assert spec == "None"


def _run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_import_is_light_and_subpackages_load_lazily():
    result = _run_python(
        "import sys, mhe_jax\n"
        "heavy = ('flax', 'orbax', 'matplotlib', 'sklearn', 'PIL', 'tqdm')\n"
        "print(sorted(m for m in sys.modules if m.partition('.')[0] in heavy))\n"
        "print(sorted(m for m in sys.modules if m.startswith('mhe_jax.')"
        " and m.count('.') == 1 and not m.split('.')[1].startswith('_')))\n"
        "print(mhe_jax.models.cnn9.__module__, mhe_jax.train.fit.__module__,\n"
        "      mhe_jax.data.load_digits.__module__, mhe_jax.sphere.tammes.__module__,\n"
        "      mhe_jax.experiments.get_config.__module__)\n"
        "print(all(n in dir(mhe_jax) for n in ('models', 'data', 'train', 'sphere',"
        " 'experiments')))\n"
        "try:\n"
        "    mhe_jax.no_such_name\n"
        "except AttributeError as error:\n"
        "    print(error)\n"
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "[]", f"import mhe_jax loaded optional packages: {lines[0]}"
    assert lines[1] == "[]", f"import mhe_jax loaded subpackages: {lines[1]}"
    assert lines[2].split() == [
        "mhe_jax.models.cnn", "mhe_jax.train.loop", "mhe_jax.data.digits",
        "mhe_jax.sphere._tammes", "mhe_jax.experiments.configs",
    ]
    assert lines[3] == "True"
    assert lines[4] == "module 'mhe_jax' has no attribute 'no_such_name'"


@pytest.mark.parametrize("subpackage", ["models", "train"])
def test_missing_models_extra_says_how_to_install(subpackage):
    # A None entry in sys.modules makes `import flax` fail as if flax were not installed.
    result = _run_python(
        "import sys\n"
        "sys.modules['flax'] = None\n"
        "import mhe_jax\n"
        "print(mhe_jax.hyperspherical_energy.__name__, mhe_jax.sphere.__name__)\n"
        "try:\n"
        f"    from mhe_jax import {subpackage}\n"
        "except ImportError as error:\n"
        "    print(type(error).__name__, error.name, '|', error)\n"
        "    print(type(error.__cause__).__name__)\n"
        "else:\n"
        "    print('imported')\n"
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "hyperspherical_energy mhe_jax.sphere"
    assert lines[1] == (
        f"ImportError flax | mhe_jax.{subpackage} needs flax, which is not installed: "
        "install mhe_jax[models] (pip install 'mhe_jax[models]')"
    )
    assert lines[2] == "ModuleNotFoundError"


def test_other_import_errors_propagate_unchanged():
    # A missing module that is not part of the [models] extra is a bug, not a missing extra.
    result = _run_python(
        "import sys\n"
        "sys.modules['mhe_jax.sphere._tammes'] = None\n"
        "import mhe_jax\n"
        "try:\n"
        "    mhe_jax.sphere\n"
        "except ImportError as error:\n"
        "    print(type(error).__name__, error.name)\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ModuleNotFoundError", "mhe_jax.sphere._tammes"]


@pytest.mark.parametrize("subpackage", ["models", "train"])
def test_direct_import_without_flax_says_how_to_install(subpackage):
    # `import mhe_jax.models` goes through the import system, not mhe_jax.__getattr__.
    result = _run_python(
        "import sys\n"
        "sys.modules['flax'] = None\n"
        "try:\n"
        f"    import mhe_jax.{subpackage}\n"
        "except ImportError as error:\n"
        "    print(type(error).__name__, error.name, '|', error)\n"
        "    print(type(error.__cause__).__name__)\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"ImportError flax | mhe_jax.{subpackage} needs flax, which is not installed: "
        "install mhe_jax[models] (pip install 'mhe_jax[models]')",
        "ModuleNotFoundError",
    ]

