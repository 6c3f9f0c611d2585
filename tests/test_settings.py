"""The typed settings loader: conversion, ranges, every problem reported at once, round trip."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import pytest

from inspection.settings import SettingsError, from_mapping, load_toml, setting, to_mapping


class Mode(enum.Enum):
    RASTER = "raster"
    GRID_LOCKED = "grid-locked"


@dataclass(frozen=True)
class Inner:
    power_w: tuple[float, ...] = setting((0.001, 0.01), doc="excitation powers")
    mode: Mode = setting(Mode.RASTER)


@dataclass(frozen=True)
class Outer:
    pitch_um: float = setting(minimum=0.0, exclusive_minimum=True, maximum=1000.0, unit="µm")
    lines: int = setting(10, minimum=1, maximum=100)
    label: str = setting("x", choices=("x", "y"))
    enabled: bool = setting(True)
    inner: Inner = field(default_factory=Inner)

    def __post_init__(self) -> None:
        if self.lines > 50 and self.pitch_um < 1:
            raise ValueError("lines: more than 50 lines need pitch_um >= 1")


def test_valid_mapping_converts_types() -> None:
    settings = from_mapping(Outer, {"pitch_um": 20, "inner": {"power_w": [0.002, 0.02], "mode": "grid-locked"}})
    assert settings.pitch_um == 20.0 and isinstance(settings.pitch_um, float)
    assert settings.inner == Inner(power_w=(0.002, 0.02), mode=Mode.GRID_LOCKED)


def test_every_problem_is_reported_at_once() -> None:
    data = {
        "pitch_um": 0,
        "lines": 2.5,
        "label": "z",
        "enabled": "yes",
        "colour": "red",
        "inner": {"power_w": "high", "mode": "spiral"},
    }
    with pytest.raises(SettingsError) as caught:
        from_mapping(Outer, data, source="recipe.toml")
    problems = caught.value.problems
    assert len(problems) == 7
    text = str(caught.value)
    assert "recipe.toml" in text
    assert "pitch_um: 0 is outside the allowed range (0, 1000] µm" in text
    assert "lines: expected an integer, got 2.5" in text
    assert "label: 'z' is not one of 'x', 'y'" in text
    assert "enabled: expected true or false" in text
    assert "colour: unknown setting" in text
    assert "inner.power_w: expected a list" in text
    assert "inner.mode: 'spiral' is not one of 'raster', 'grid-locked'" in text


def test_missing_required_field_names_range() -> None:
    with pytest.raises(SettingsError, match=r"pitch_um: missing \(required: \(0, 1000\] µm\)"):
        from_mapping(Outer, {})


def test_cross_field_rule_is_reported() -> None:
    with pytest.raises(SettingsError, match="more than 50 lines need pitch_um >= 1"):
        from_mapping(Outer, {"pitch_um": 0.5, "lines": 60})


def test_round_trip() -> None:
    settings = from_mapping(Outer, {"pitch_um": 5, "inner": {"mode": "grid-locked"}})
    assert from_mapping(Outer, to_mapping(settings)) == settings


def test_bad_toml_names_the_file(tmp_path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("pitch_um = [1,\n")
    with pytest.raises(SettingsError, match="not valid TOML") as caught:
        load_toml(path)
    assert str(path) in str(caught.value)
    with pytest.raises(SettingsError, match="file not found"):
        load_toml(tmp_path / "absent.toml")
