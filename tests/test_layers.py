"""The layers import one way (docs/architecture.md, "The modules"): pyproject.toml's contracts, kept by lint-imports."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
LAYERS = "api above delivery and live, above the store, above the base modules"
TAKEOVER = ("live.takeover is used by live/streams.py (and by factory.py and launch.py, which serve with its HTTP "
            "server)")
LIVE = "inside live: the streams above the take-over, above the broker"

pytestmark = pytest.mark.store_agnostic  # no database in sight


def lint_imports(folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LINT_IMPORTS), "--no-logo", "--no-cache"], cwd=folder, capture_output=True,
                          text=True, timeout=120)


def test_the_package_keeps_every_contract() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 3 kept, 0 broken." in result.stdout


@pytest.fixture
def package(tmp_path: Path) -> Path:
    """A copy of the package and its contracts, to break."""
    shutil.copytree(ROOT / "tasknotify", tmp_path / "tasknotify", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return tmp_path


@pytest.mark.parametrize(("module", "statement", "contract"), [
    ("config.py", "from tasknotify.api import schemas", LAYERS),  # the base layer reaching up, inside a function
    ("delivery/worker.py", "from tasknotify.live.broker import SubscriptionClosed", LAYERS),  # sideways
    ("store/store.py", "from tasknotify.delivery import channels", LAYERS),
    ("live/streams.py", "from tasknotify.api.auth import authenticate", LAYERS),
    ("api/tasks.py", "from tasknotify.live.takeover import fanout", TAKEOVER),
    ("live/takeover/fanout.py", "from tasknotify.live import streams", LIVE),
])
def test_an_import_against_the_direction_breaks_a_contract(package: Path, module: str, statement: str,
                                                            contract: str) -> None:
    path = package / "tasknotify" / module
    path.write_text(path.read_text() + f"\n\ndef against_the_layers() -> None:\n    {statement}\n")
    result = lint_imports(package)
    assert result.returncode == 1, result.stdout
    assert f"{contract} BROKEN" in " ".join(result.stdout.split()), result.stdout


def test_a_module_in_no_layer_breaks_the_layers(package: Path) -> None:
    (package / "tasknotify" / "helpers.py").write_text('"""Placed in no layer."""\n')
    result = lint_imports(package)
    assert result.returncode == 1, result.stdout
    assert "tasknotify.helpers" in result.stdout
