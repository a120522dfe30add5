"""The wheel, as a device developer gets it: built from the repository, installed (not editable)
into a fresh virtual environment, run from a directory outside the checkout. It must carry the
device profiles, the SQL migrations and the sample library, and every command must work.

Nothing is downloaded: pip builds with this venv's setuptools (--no-build-isolation), installs
with --no-deps --no-index, and the fresh venv borrows this venv's site-packages for aiohttp,
apsw, cryptography and zstandard through a .pth file, written after the install so that pip
never sees the editable shelfsync there. A .pth line only adds a directory to sys.path; the .pth
files inside it (the editable install's finder) do not run, so `daemon` comes from the wheel.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
TOP_PACKAGES = ("daemon", "server_stub", "devkit")
COMMANDS = sorted(PYPROJECT["project"]["scripts"])
# Not the wheel's business; copying them would only slow the build down.
NOT_BUILT = (".git", ".venv", "tests", "bench", "docs", "build", "dist", "*.egg-info")
NOT_BUILT += ("__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis")
NOT_BUILT += ("demo-data", "stub-data")
BUILD_TIMEOUT_S = 300.0
DEMO_TIMEOUT_S = 300.0


def run(args: list[str | Path], timeout: float = BUILD_TIMEOUT_S, **kwargs: object) -> str:
    done = subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        **kwargs,  # type: ignore[call-overload]
    )
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stdout}{done.stderr}"
    return str(done.stdout)


def _tree_packages() -> set[str]:
    """Every folder of the three packages, as the dotted name the wheel needs listed."""
    names = set()
    for top in TOP_PACKAGES:
        for folder in [REPO / top, *sorted((REPO / top).rglob("*"))]:
            if folder.is_dir() and folder.name != "__pycache__":
                names.add(".".join(folder.relative_to(REPO).parts))
    return names


def test_pyproject_lists_every_package_of_the_tree() -> None:
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    wanted = _tree_packages() | {"daemon.device_profiles"}
    assert not wanted - listed, f"add to [tool.setuptools] packages: {sorted(wanted - listed)}"
    assert not listed - wanted, f"listed but not in the tree: {sorted(listed - wanted)}"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of the checkout (setuptools writes build/ into its source)."""
    source = tmp_path_factory.mktemp("source") / "shelfsync"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*NOT_BUILT))
    out = tmp_path_factory.mktemp("dist")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", out, source])
    [built] = out.glob("shelfsync-*.whl")
    return built


@dataclass(frozen=True)
class Installed:
    bin: Path
    site_packages: Path
    elsewhere: Path  # a working directory outside the checkout
    env: dict[str, str]

    def run(self, *args: str, timeout: float = BUILD_TIMEOUT_S) -> str:
        return run([self.bin / args[0], *args[1:]], timeout, cwd=self.elsewhere, env=self.env)


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    venv = tmp_path_factory.mktemp("venv") / "fresh"
    run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--python", python]
    run([*pip, "install", "--no-deps", "--no-index", wheel])
    purelib = run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"])
    site_packages = Path(purelib.strip())
    borrowed = "\n".join(site.getsitepackages())
    (site_packages / "shelfsync-test-dependencies.pth").write_text(borrowed + "\n")
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return Installed(venv / "bin", site_packages, elsewhere, env)


def test_the_wheel_carries_the_code_profiles_migrations_sample_library_and_licence(
    wheel: Path,
) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        metadata = z.read(f"shelfsync-{VERSION}.dist-info/METADATA").decode()

    def shipped(pattern: str) -> set[str]:
        return {p.relative_to(REPO).as_posix() for p in REPO.glob(pattern)}

    for top in TOP_PACKAGES:
        assert shipped(f"{top}/**/*.py") <= names, top
    assert shipped("daemon/sql/*.sql") <= names
    assert shipped("server_stub/sample_library/*") <= names
    profiles = {f"daemon/{p}" for p in shipped("device_profiles/*.toml")}
    assert profiles
    assert profiles <= names
    assert f"shelfsync-{VERSION}.dist-info/licenses/LICENSE" in names
    assert not [n for n in names if n.startswith(("tests/", "bench/", "device_profiles/"))]
    assert "License-Expression: Apache-2.0" in metadata
    assert "Classifier: Operating System :: POSIX :: Linux" in metadata


def test_the_installed_code_is_the_wheels_not_the_checkouts(installed: Installed) -> None:
    where = installed.run(
        "python",
        "-c",
        "import daemon, devkit, server_stub as s; print(daemon.__file__, s.__file__)",
    )
    for path in where.split():
        assert Path(path).is_relative_to(installed.site_packages), path


def test_every_command_answers_help_and_version(installed: Installed) -> None:
    assert "run" in installed.run("shelfsync", "--help")
    assert "--library" in installed.run("shelfsync-stub", "--help")
    for command in COMMANDS:
        assert installed.run(command, "--version") == f"{command} {VERSION}\n"
    names = sorted(p.stem for p in (REPO / "device_profiles").glob("*.toml"))
    for help_text in (
        installed.run("shelfsync", "run", "--help"),
        installed.run("shelfsync-link", "--help"),
    ):
        assert all(name in help_text for name in names), help_text
        assert "TOML path ()" not in help_text


def test_the_demo_runs_from_the_wheel(installed: Installed) -> None:
    out = installed.run("shelfsync-demo", timeout=DEMO_TIMEOUT_S)
    sample_library = installed.site_packages / "server_stub" / "sample_library"
    assert f"sample library from {sample_library}" in out
    assert "device: profile paperwhite-wifi" in out
    assert "all byte-identical to the original EPUB" in out
    assert (installed.elsewhere / "demo-data" / "device" / "shelfsync.db").is_file()
