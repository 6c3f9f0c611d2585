"""Test configuration: Qt renders offscreen, so widget tests run on machines with no display; the station's data
directory (deployed models, scan history, audit log) is a temporary one, so tests never touch a real station's."""

import os
import tempfile

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ["PLMAPPER_HOME"] = tempfile.mkdtemp(prefix="plmapper-test-home-")


# ---------------------------------------------------------------------------------------------------------------------
# Fixtures shared by several test modules
# ---------------------------------------------------------------------------------------------------------------------

from pathlib import Path

import pytest

from drivers.virtual.profile import load_profile
from drivers.virtual.synthetic import write_synthetic_scan
from drivers.virtual.world import WaferWorld
from inspection.recipe import load_recipe

TEST_DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty station home for one test (deployed models, scan history, audit log), history on."""
    monkeypatch.setenv("PLMAPPER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PLMAPPER_HISTORY", raising=False)
    return tmp_path / "home"


# ~480 chips of 1.2 mm, each EL failure kind common enough to pick some
DEFECTIVE_PROFILE = (TEST_DATA / "coarse-profile.toml").read_text() + (
    "\n[defects]\nmissing_fraction = 0.03\ndead_fraction = 0.03\ndim_fraction = 0.03\nleaky_fraction = 0.03\n"
    "el_open_fraction = 0.03\nel_series_fraction = 0.03\n"
)


@pytest.fixture(scope="session")
def el_profile_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("profile") / "defective.toml"
    path.write_text(DEFECTIVE_PROFILE)
    return path


@pytest.fixture(scope="session")
def el_world(el_profile_path: Path) -> WaferWorld:
    return WaferWorld(load_profile(el_profile_path))


@pytest.fixture
def el_scan_path(el_world: WaferWorld, tmp_path: Path) -> Path:
    """A scan file of the defective wafer with its recipe and a perfect alignment (two lines: the EL data and the
    probing need no more than the recipe and the alignment)."""
    path = tmp_path / "scan.h5"
    write_synthetic_scan(path, el_world.profile, load_recipe(TEST_DATA / "coarse-recipe.toml"), lines=slice(0, 2))
    return path
