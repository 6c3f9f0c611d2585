"""Tests of inspection.recipe: the example recipes, round trip, every field's range, rules between fields."""

from __future__ import annotations

import copy
import dataclasses
import math
import tomllib
import typing
from pathlib import Path
from typing import Any

import pytest

from drivers.virtual.profile import load_profile
from inspection.recipe import (
    Recipe,
    SamplingSettings,
    ScanMode,
    SpectraSettings,
    SpectrumPattern,
    load_recipe,
    recipe_from_text,
    recipe_to_toml,
)
from inspection.settings import SettingsError

RECIPES = Path(__file__).resolve().parent.parent / "resources" / "recipes"
EXAMPLES = sorted(RECIPES.glob("*.toml"))
DEMO = RECIPES / "demo-2in.toml"


def demo_data() -> dict[str, Any]:
    with DEMO.open("rb") as stream:
        return tomllib.load(stream)


def with_value(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``data`` with the dotted ``path`` set to ``value``."""
    changed = copy.deepcopy(data)
    *sections, key = path.split(".")
    table = changed
    for section in sections:
        table = table.setdefault(section, {})  # optional sections may be absent from the example recipe
    table[key] = value
    return changed


def problems_of(data: dict[str, Any], source: str = "test.toml") -> list[str]:
    with pytest.raises(SettingsError) as caught:
        recipe_from_text(_dumps(data), source=source)
    assert source in str(caught.value)
    return caught.value.problems


def _dumps(data: dict[str, Any]) -> str:
    import tomli_w  # noqa: PLC0415 - only the tests that write TOML need it

    return tomli_w.dumps(data)


def leaf_paths(cls: type, prefix: str = "") -> list[str]:
    """Dotted paths of every non-section field of a settings class, recursively."""
    paths = []
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[field.name]):
            paths.extend(leaf_paths(hints[field.name], f"{prefix}{field.name}."))
        else:
            paths.append(prefix + field.name)
    return paths


# --- the examples ---------------------------------------------------------------------------------------------------


def test_there_are_examples_for_every_size_asked_for() -> None:
    diameters = {load_recipe(path).substrate.diameter_mm for path in EXAMPLES}
    assert {50.8, 100.0, 150.0, 200.0} <= diameters


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.name)
def test_every_example_loads(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.name
    assert recipe.layout().chip_count > 0
    assert recipe.sampling.sample_pitch_um <= recipe.grid.min_chip_um / 4


def test_demo_recipe_matches_the_demo_profile() -> None:
    recipe = load_recipe(DEMO)
    profile = load_profile(RECIPES.parent / "profiles" / "demo-2in.toml")
    assert recipe.substrate == profile.substrate  # the same settings types: the recipe expects that very wafer
    assert recipe.grid == profile.grid
    assert recipe.excitation.powers_w == (0.0005, 0.02)
    assert recipe.sampling.mode is ScanMode.RASTER


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.name)
def test_round_trip_is_exact(path: Path, tmp_path: Path) -> None:
    recipe = load_recipe(path)
    text = recipe_to_toml(recipe)
    assert recipe_from_text(text) == recipe
    written = tmp_path / "again.toml"
    written.write_text(text, encoding="utf-8")
    assert load_recipe(written) == recipe
    assert recipe_to_toml(load_recipe(written)) == text


def test_round_trip_of_values_off_the_defaults() -> None:
    recipe = load_recipe(DEMO)
    recipe = dataclasses.replace(
        recipe,
        name='odd "name" with µ and a \\ backslash',
        excitation=dataclasses.replace(recipe.excitation, powers_w=(1e-5, 0.1 / 3, 1.0)),
        spectra=SpectraSettings(SpectrumPattern.EVERY_NTH, every_nth=7, start_nm=350.0, stop_nm=1200.0),
    )
    assert recipe_from_text(recipe_to_toml(recipe)) == recipe


def test_written_recipe_holds_every_field() -> None:
    data = tomllib.loads(recipe_to_toml(load_recipe(DEMO)))
    written = []
    for key, value in data.items():
        if isinstance(value, dict):
            written.extend(f"{key}.{inner}" for inner in value)
        else:
            written.append(key)
    assert sorted(written) == sorted(leaf_paths(Recipe))


# --- every field's range ------------------------------------------------------------------------------------------

# (dotted path, bad value, what the message must say is allowed). Written out by hand from the brief and the
# instrument manuals rather than generated from the declarations, so a wrong declaration fails here.
BAD_FIELDS = [
    ("name", 42, "expected text"),
    ("substrate.diameter_mm", 125.0, "is not one of 50.8, 76.2, 100.0, 150.0, 200.0"),
    ("substrate.edge_exclusion_mm", 25.0, "outside the allowed range [0, 20] mm"),
    ("grid.pitch_x_um", 0.5, "outside the allowed range [1, 5000] µm"),
    ("grid.pitch_y_um", 6000.0, "outside the allowed range [1, 5000] µm"),
    ("grid.chip_width_um", 0.0, "outside the allowed range [1, 5000] µm"),
    ("grid.chip_height_um", 5001.0, "outside the allowed range [1, 5000] µm"),
    ("grid.origin_x_um", 2e5, "outside the allowed range [-100000, 100000] µm"),
    ("grid.origin_y_um", -2e5, "outside the allowed range [-100000, 100000] µm"),
    ("grid.rotation_deg", 6.0, "outside the allowed range [-5, 5] °"),
    ("excitation.laser_wavelength_nm", 150.0, "outside the allowed range [200, 1100] nm"),
    ("excitation.powers_w", [0.0005, 1.5], "outside the allowed range (0, 1] W"),
    ("excitation.power_tolerance_fraction", 0.0, "outside the allowed range (0, 0.5]"),
    ("excitation.settle_s", -1.0, "outside the allowed range [0, 60] s"),
    ("sampling.mode", "spiral", "is not one of 'raster', 'grid-locked'"),
    ("sampling.velocity_um_s", 0.0, "outside the allowed range (0, 1e+06] µm/s"),
    ("sampling.sample_rate_hz", 2e6, "outside the allowed range [1000, 1e+06] Hz"),
    ("sampling.line_pitch_um", -1.0, "outside the allowed range (0, 1000] µm"),
    ("sampling.run_up_um", 60000.0, "outside the allowed range (0, 50000] µm"),
    ("spectra.pattern", "random", "is not one of 'none', 'every-nth', 'grid'"),
    ("spectra.every_nth", 0, "outside the allowed range [1, 1e+09]"),
    ("spectra.grid_sites", 1001, "outside the allowed range [1, 1000]"),
    ("spectra.include_flagged", "yes", "expected true or false"),
    ("spectra.max_flagged", -1, "outside the allowed range [0, 100000]"),
    ("spectra.start_nm", 300.0, "outside the allowed range [350, 1200] nm"),
    ("spectra.stop_nm", 1300.0, "outside the allowed range [350, 1200] nm"),
    ("spectra.resolution_nm", 0.3, "is not one of 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0"),
    ("spectra.points", 100, "outside the allowed range [101, 50001]"),
    ("focus.focus_z_um", -5.0, "outside the allowed range [0, 100000] µm"),
    ("focus.safe_z_um", 2e5, "outside the allowed range [0, 100000] µm"),
    ("focus.max_z_um", -1.0, "outside the allowed range [0, 100000] µm"),
    ("alignment.enabled", 1, "expected true or false"),
    ("alignment.sites", 2, "outside the allowed range [3, 64]"),
    ("alignment.site_radius_fraction", 0.99, "outside the allowed range (0, 0.95]"),
    ("alignment.scan_length_um", 0.0, "outside the allowed range (0, 20000] µm"),
    ("alignment.max_offset_um", 5000.0, "outside the allowed range [0, 3000] µm"),
    ("alignment.max_rotation_deg", 4.0, "outside the allowed range [0, 3] °"),
    ("classification.missing_fraction", 0.5, "outside the allowed range [0, 0.1]"),
    ("classification.dead_fraction", -0.1, "outside the allowed range [0, 1]"),
    ("classification.dim_fraction", 1.5, "outside the allowed range [0, 1]"),
    ("classification.leakage_ratio_fraction", 2.0, "outside the allowed range [0, 1]"),
    ("classification.bright_fraction", 0.5, "outside the allowed range [1, 100]"),
    ("classification.wavelength_shift_nm", -1.0, "outside the allowed range [0, 100] nm"),
    ("classification.broadened_fraction", 20.0, "outside the allowed range [1, 10]"),
]


def test_the_bad_value_table_covers_every_field() -> None:
    assert sorted(path for path, _, _ in BAD_FIELDS) == sorted(leaf_paths(Recipe))


@pytest.mark.parametrize(("path", "value", "allowed"), BAD_FIELDS, ids=[path for path, _, _ in BAD_FIELDS])
def test_every_bad_field_is_reported_with_path_value_and_range(path: str, value: Any, allowed: str) -> None:
    problems = problems_of(with_value(demo_data(), path, value))
    assert len(problems) == 1, problems
    (problem,) = problems
    bad_item = value[-1] if isinstance(value, list) else value
    where = f"{path}[{len(value) - 1}]" if isinstance(value, list) else path
    assert problem.startswith(f"{where}: "), problem
    assert repr(bad_item) in problem
    assert allowed in problem


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("grid.pitch_x_um", "wide", "grid.pitch_x_um: expected a number, got 'wide'"),
        ("spectra.points", 1000.5, "spectra.points: expected an integer, got 1000.5"),
        ("excitation.powers_w", 0.02, "excitation.powers_w: expected a list, got 0.02"),
    ],
)
def test_wrong_types_are_reported(path: str, value: Any, message: str) -> None:
    assert problems_of(with_value(demo_data(), path, value)) == [message]


def test_a_section_that_is_not_a_table_is_reported() -> None:
    (problem,) = problems_of(with_value(demo_data(), "focus", 3.0))
    assert problem.startswith("focus") and "expected a table, got 3.0" in problem


# --- rules between fields ------------------------------------------------------------------------------------------

RULES = [
    # (changes, the one expected problem, fragments it must contain)
    ({"excitation.powers_w": [0.02]}, "excitation.powers_w: [0.02] has 1 power; at least 2 are needed", ()),
    ({"excitation.powers_w": [0.02, 0.0005]}, "excitation.powers_w: [0.02, 0.0005] must be strictly ascending", ()),
    ({"excitation.powers_w": [0.01, 0.01]}, "excitation.powers_w: [0.01, 0.01] must be strictly ascending", ()),
    ({"excitation.powers_w": [0.01 * (i + 1) for i in range(9)]}, "excitation.powers_w: [", ("at most 8",)),
    ({"grid.chip_width_um": 120.0}, "grid.chip_width_um: 120.0 µm is wider than pitch_x_um = 100.0 µm", ()),
    ({"grid.chip_height_um": 100.5}, "grid.chip_height_um: 100.5 µm is taller than pitch_y_um = 100.0 µm", ()),
    (
        {"sampling.velocity_um_s": 1_000_000.0},
        "sampling.sample_rate_hz: 50000.0 Hz at velocity_um_s = 1000000.0 µm/s gives a sample pitch of 20 µm",
        ("at most 15 µm", "sample_rate_hz to >= 66666.7 Hz", "velocity_um_s to <= 750000 µm/s"),
    ),
    (
        {"sampling.line_pitch_um": 40.0},
        "sampling.line_pitch_um: 40.0 µm must be at most 30 µm in raster mode",
        ("half the smallest chip side, 60 µm",),
    ),
    (
        {"sampling.velocity_um_s": 1000.0, "sampling.sample_rate_hz": 1e6},
        "sampling.sample_rate_hz: 1000000.0 Hz at velocity_um_s = 1000.0 µm/s needs 51,000,001 samples",
        ("more than the digitizer's 6,000,000",),
    ),
    ({"spectra.stop_nm": 410.0}, "spectra.stop_nm: 410.0 nm must be greater than start_nm = 420.0 nm", ()),
    ({"focus.safe_z_um": 2500.0}, "focus.safe_z_um: 2500.0 µm must be at most focus_z_um = 2000.0 µm", ()),
    ({"focus.max_z_um": 1500.0}, "focus.max_z_um: 1500.0 µm must be at least focus_z_um = 2000.0 µm", ()),
    ({"name": "  "}, "name: '  ' must not be empty", ()),
    (
        {
            "substrate.edge_exclusion_mm": 20.0,
            "grid.pitch_x_um": 5000.0,
            "grid.pitch_y_um": 5000.0,
            "grid.chip_width_um": 5000.0,
            "grid.chip_height_um": 5000.0,
            "grid.origin_x_um": 2500.0,
            "grid.origin_y_um": 2500.0,
        },
        "substrate.edge_exclusion_mm: 20.0 mm leaves no usable chip of 5000 × 5000 µm on the 50.8 mm substrate",
        (),
    ),
]


@pytest.mark.parametrize(("changes", "expected", "fragments"), RULES, ids=[rule[1].split(":")[0] for rule in RULES])
def test_rules_between_fields(changes: dict[str, Any], expected: str, fragments: tuple[str, ...]) -> None:
    data = demo_data()
    for path, value in changes.items():
        data = with_value(data, path, value)
    problems = problems_of(data)
    assert len(problems) == 1, problems
    assert problems[0].startswith(expected), problems[0]
    for fragment in fragments:
        assert fragment in problems[0]


def test_raster_line_pitch_rule_does_not_apply_to_grid_locked_lines() -> None:
    data = with_value(with_value(demo_data(), "sampling.line_pitch_um", 40.0), "sampling.mode", "grid-locked")
    assert recipe_from_text(_dumps(data)).sampling.line_pitch_um == 40.0


def test_sample_pitch_limit_is_a_quarter_of_the_smaller_chip_side() -> None:
    data = with_value(with_value(demo_data(), "grid.chip_height_um", 40.0), "sampling.velocity_um_s", 500_000.0)
    data = with_value(data, "sampling.line_pitch_um", 20.0)
    assert recipe_from_text(_dumps(data)).sampling.sample_pitch_um == 10.0  # 40 / 4 exactly: allowed
    problems = problems_of(with_value(data, "sampling.velocity_um_s", 500_001.0))
    assert "at most 10 µm is allowed (a quarter of the smallest chip side, 40 µm)" in problems[0]


def test_many_bad_fields_are_all_reported_at_once(tmp_path: Path) -> None:
    data = demo_data()
    changes = {
        "substrate.diameter_mm": 125.0,
        "grid.rotation_deg": 9.0,
        "excitation.powers_w": [0.02, 0.001],
        "sampling.sample_rate_hz": 5e6,
        "spectra.resolution_nm": 3.0,
        "spectra.points": 10,
        "focus.max_z_um": 1000.0,
        "alignment.sites": 1,
        "alignment.colour": "red",
    }
    for path, value in changes.items():
        data = with_value(data, path, value)
    path = tmp_path / "broken.toml"
    path.write_text(_dumps(data), encoding="utf-8")
    with pytest.raises(SettingsError) as caught:
        load_recipe(path)
    problems = caught.value.problems
    assert len(problems) == len(changes), problems
    for dotted in changes:
        assert any(problem.startswith(dotted) for problem in problems), dotted
    assert str(path) in str(caught.value)
    assert f"{len(changes)} problem(s)" in str(caught.value)


def test_missing_sections_and_fields_are_reported() -> None:
    data = demo_data()
    del data["focus"]
    del data["grid"]["pitch_x_um"]
    focus, pitch = sorted(problems_of(data))
    assert focus == "focus: missing (required: Z heights)"
    assert pitch.startswith("grid.pitch_x_um: missing (required: [1, 5000] µm")


def test_malformed_toml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "half-written.toml"
    path.write_text('name = "x"\n[sampling\nvelocity_um_s = 1\n', encoding="utf-8")
    with pytest.raises(SettingsError) as caught:
        load_recipe(path)
    assert str(path) in str(caught.value)
    assert "not valid TOML" in str(caught.value) and "line 2" in str(caught.value)


def test_malformed_text_names_its_source() -> None:
    with pytest.raises(SettingsError, match=r"in clipboard:\n  - not valid TOML"):
        recipe_from_text("name = = 3", source="clipboard")
    with pytest.raises(SettingsError, match=r"in recipe text:"):
        recipe_from_text("[[[")


def test_missing_file_is_a_settings_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="file not found"):
        load_recipe(tmp_path / "nowhere.toml")


# --- objects built in code -----------------------------------------------------------------------------------------


def test_ranges_hold_for_objects_built_in_code() -> None:
    recipe = load_recipe(DEMO)
    with pytest.raises(
        ValueError, match=r"^sample_rate_hz: 2000000.0 is outside the allowed range \[1000, 1e\+06\] Hz"
    ):
        dataclasses.replace(recipe.sampling, sample_rate_hz=2e6)
    with pytest.raises(ValueError, match=r"powers_w\[0\]: -0.1 is outside the allowed range \(0, 1\] W"):
        dataclasses.replace(recipe.excitation, powers_w=(-0.1, 0.5))
    with pytest.raises(ValueError, match=r"^mode: 'spiral' is not one of 'raster', 'grid-locked'"):
        dataclasses.replace(recipe.sampling, mode="spiral")
    with pytest.raises(ValueError, match=r"^sampling.line_pitch_um: 40.0 µm must be at most 30 µm"):
        dataclasses.replace(recipe, sampling=dataclasses.replace(recipe.sampling, line_pitch_um=40.0))


def test_plain_values_given_in_code_become_the_field_types() -> None:
    sampling = SamplingSettings("grid-locked", 100_000.0, 50_000.0, line_pitch_um=25.0)  # type: ignore[arg-type]
    assert sampling.mode is ScanMode.GRID_LOCKED
    recipe = load_recipe(DEMO)
    excitation = dataclasses.replace(recipe.excitation, powers_w=[0.001, 0.01])
    assert excitation.powers_w == (0.001, 0.01)
    assert hash(excitation)  # frozen and hashable: a list would not be


def test_layout_uses_the_recipe_geometry_and_is_built_once() -> None:
    recipe = load_recipe(DEMO)
    layout = recipe.layout()
    assert layout is recipe.layout()
    assert layout.substrate.diameter_mm == 50.8 and layout.substrate.edge_exclusion_mm == 2.0
    assert layout.grid == recipe.grid.grid()
    # 2" at 100 µm pitch, 60 µm chips, 2 mm exclusion: about π·(23.4 mm)² / (100 µm)² chips, less the flats.
    assert 0.9 < layout.chip_count / (math.pi * 234.0**2) < 1.0


def test_docs_list_every_field_in_its_section() -> None:
    text = (RECIPES.parent.parent / "docs" / "recipes.md").read_text(encoding="utf-8")
    for path in leaf_paths(Recipe):
        if "." not in path:
            assert f"| `{path}` |" in text, path
            continue
        section, name = path.split(".")
        heading = text.index(f"### `[{section}]`")
        following = text.find("### ", heading + 1)
        assert f"| `{name}` |" in text[heading : following if following > 0 else None], path
