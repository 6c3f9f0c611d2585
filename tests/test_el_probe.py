"""EL probing on the virtual station: fail modes equal the ground truth, results stored in the scan file, the laser
off and the probe down whenever current flows, and the station safe on every way out."""

from __future__ import annotations

import contextlib
import re
import threading
from pathlib import Path

import numpy as np
import pytest

from app.cli import main
from drivers.errors import InstrumentError
from drivers.interfaces import Axis
from drivers.station import Station, load_station_config, open_station
from drivers.virtual.profile import load_profile
from drivers.virtual.station import VirtualStation
from drivers.virtual.world import WaferWorld, classify_el
from inspection.el_probe import (
    EL_INTENSITY_UNIT,
    ElProbeAborted,
    ElProbeConfig,
    ElProbeProgress,
    ElProbeSettings,
    choose_probe_chips,
    el_probe_config_to_toml,
    load_el_probe_config,
    probe_chips,
    run_el_probe,
    travel_order,
)
from inspection.el_reference import ElFailMode, ElTestCriteria, read_el_reference
from inspection.recipe import load_recipe
from inspection.settings import SettingsError

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"
RECIPE = DATA / "coarse-recipe.toml"
STATION = DATA / "coarse-station.toml"


@pytest.fixture(scope="module")
def truth(el_world: WaferWorld) -> dict[str, np.ndarray]:
    table = el_world.truth_rows(0, el_world.layout.row_count)
    table["el_result"] = classify_el(table, el_world.profile.el_test)
    return table


@pytest.fixture(scope="module")
def virtual(el_profile_path: Path) -> VirtualStation:
    with VirtualStation.start(el_profile_path) as running:
        yield running


@pytest.fixture
def config(el_world: WaferWorld) -> ElProbeConfig:
    return ElProbeConfig(probe=ElProbeSettings(contact_z_um=el_world.profile.stage.probe_contact_z_um))


@contextlib.contextmanager
def station_on(virtual: VirtualStation):
    virtual.control(op="clear_faults")
    station = open_station(load_station_config(STATION), resources=virtual.resources)
    try:
        yield station
    finally:
        with contextlib.suppress(InstrumentError):
            station.close()
        virtual.control(op="clear_faults")


def known_chips(truth: dict[str, np.ndarray], *, per_mode: int = 2, good: int = 10) -> np.ndarray:
    """Indices into ``truth`` of ``per_mode`` chips of every fail mode and ``good`` passing ones (seeded)."""
    rng = np.random.default_rng(5)
    picked = []
    for mode in ElFailMode:
        candidates = np.flatnonzero(truth["el_result"] == mode)
        count = good if mode is ElFailMode.PASS else per_mode
        assert candidates.size >= count, mode
        picked += rng.choice(candidates, count, replace=False).tolist()
    return np.array(picked)


def assert_station_safe(virtual: VirtualStation, station: Station, config: ElProbeConfig) -> None:
    status = virtual.control(op="status")
    assert status["smu_output"] is False
    assert status["laser_emission"] is False
    assert station.stage.position_um(Axis.Z) == pytest.approx(config.probe.safe_z_um, abs=1.0)


def test_probed_fail_modes_and_values_equal_the_truth(virtual, el_world, truth, el_scan_path, config) -> None:
    chips = known_chips(truth)
    cols, rows = truth["col"][chips], truth["row"][chips]
    progress: list[ElProbeProgress] = []
    with station_on(virtual) as station:
        outcome = run_el_probe(el_scan_path, config, station=station, chips=(cols, rows), on_progress=progress.append)
        assert_station_safe(virtual, station, config)
    assert progress[-1] == ElProbeProgress("probing", chips.size, chips.size, progress[-1].message)
    assert sum(item.phase == "presence" for item in progress) == chips.size
    stored = read_el_reference(el_scan_path)
    assert stored is not None
    np.testing.assert_array_equal(stored.records, outcome.reference.records)
    records = stored.records
    order = {(c, r): i for i, (c, r) in enumerate(zip(cols.tolist(), rows.tolist(), strict=True))}
    at = np.array([chips[order[(c, r)]] for c, r in zip(records["col"].tolist(), records["row"].tolist(), strict=True)])
    assert sorted(at.tolist()) == sorted(chips.tolist())  # every chip once, in travel order
    np.testing.assert_array_equal(records["fail_mode"], truth["el_result"][at])
    assert records["passed"].tolist() == (truth["el_result"][at] == ElFailMode.PASS).tolist()
    # the station measures what the wafer's EL reference says (open and missing: compliance, no current, no light)
    np.testing.assert_allclose(records["forward_v"], truth["el_forward_v"][at], rtol=1e-5)
    np.testing.assert_allclose(records["el_intensity"], truth["el_light_v"][at], rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(records["reverse_current_a"], truth["el_reverse_a"][at], rtol=1e-3, atol=1e-14)
    missing = records["fail_mode"] == ElFailMode.MISSING
    threshold = config.probe.presence_min_signal_v_per_w * config.probe.presence_power_w
    assert (
        stored.presence_signal_v[missing].max() < 0.1 * threshold < threshold < stored.presence_signal_v[~missing].min()
    )
    assert stored.el_intensity_unit == EL_INTENSITY_UNIT
    assert stored.criteria == config.el_test
    assert stored.forward_sweep_current_a.shape == (chips.size, config.probe.sweep_points)
    conducting = ~missing & (records["fail_mode"] != ElFailMode.OPEN)
    np.testing.assert_allclose(stored.forward_sweep_current_a[conducting, -1], config.el_test.test_current_a, rtol=1e-6)
    assert stored.provenance["source"] == "station probe"
    assert "2450" in stored.provenance["identity_smu"]
    config_file = el_scan_path.with_name("stored-config.toml")
    config_file.write_text(stored.provenance["config_toml"])
    assert load_el_probe_config(config_file) == config
    assert outcome.report.matched_count == chips.size
    fail_map = stored.fail_mode_map(el_world.layout)
    np.testing.assert_array_equal(fail_map[rows, cols], truth["el_result"][chips])


def test_a_random_sample_of_usable_chips(virtual, el_world, truth, el_scan_path, config) -> None:
    cols, rows = choose_probe_chips(el_world.layout, 20, seed=11)
    again = choose_probe_chips(el_world.layout, 20, seed=11)
    np.testing.assert_array_equal(cols, again[0])
    assert el_world.layout.chip_usable(cols, rows).all() and len(set(zip(cols, rows, strict=True))) == 20
    with station_on(virtual) as station:
        outcome = run_el_probe(el_scan_path, config, station=station, sample_count=20, seed=11)
    records = outcome.reference.records
    index = {(c, r): i for i, (c, r) in enumerate(zip(truth["col"].tolist(), truth["row"].tolist(), strict=True))}
    at = [index[chip] for chip in zip(records["col"].tolist(), records["row"].tolist(), strict=True)]
    np.testing.assert_array_equal(records["fail_mode"], truth["el_result"][at])


def test_travel_order_is_a_serpentine() -> None:
    cols, rows = travel_order(np.array([5, 1, 3, 2, 9, 0]), np.array([2, 0, 0, 1, 2, 1]))
    assert list(zip(cols.tolist(), rows.tolist(), strict=True)) == [(1, 0), (3, 0), (2, 1), (0, 1), (5, 2), (9, 2)]


class _WatchedSourceMeter:
    """The station's source-meter, checking the bench whenever current is about to flow."""

    def __init__(self, smu, check) -> None:
        self._smu, self._check = smu, check
        self.checks = 0

    def set_output(self, on: bool) -> None:
        if on:
            self._check()
            self.checks += 1
        self._smu.set_output(on)

    def sweep_current(self, *args, **kwargs):
        self._check()
        self.checks += 1
        return self._smu.sweep_current(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._smu, name)


def test_laser_off_and_probe_down_whenever_current_flows(virtual, el_world, truth, config) -> None:
    chips = known_chips(truth, per_mode=1, good=3)
    with station_on(virtual) as station:

        def check() -> None:
            assert virtual.control(op="status")["laser_emission"] is False
            assert station.stage.position_um(Axis.Z) == pytest.approx(config.probe.touchdown_z_um, abs=1.0)

        watched = _WatchedSourceMeter(station.smu, check)
        station.smu = watched  # type: ignore[assignment]
        probe_chips(
            station,
            el_world.layout,
            el_world.placement,
            (truth["col"][chips], truth["row"][chips]),
            config,
            focus_z_um=load_recipe(RECIPE).focus.focus_z_um,
        )
        assert watched.checks == 3 * chips.size  # sweep, EL, reverse: each chip
        station.smu = watched._smu
        assert_station_safe(virtual, station, config)


class _FailingDetector:
    """The detector, failing on its n-th DC reading (the EL reading: the source-meter output is on then)."""

    def __init__(self, detector, fail_at: int) -> None:
        self._detector, self._fail_at, self.readings = detector, fail_at, 0

    def read_voltage_v(self) -> float:
        self.readings += 1
        if self.readings == self._fail_at:
            raise InstrumentError(self._detector.name, "injected failure during the EL reading")
        return self._detector.read_voltage_v()

    def __getattr__(self, name: str):
        return getattr(self._detector, name)


def test_an_instrument_failure_with_the_output_on_leaves_the_station_safe(
    virtual, el_world, truth, el_scan_path, config
):
    chips = known_chips(truth, per_mode=0, good=4)
    outputs: list[bool] = []
    with station_on(virtual) as station:
        detector = station.detector
        failing = _FailingDetector(detector, fail_at=4)  # chip 2: dark, then EL with current flowing

        def read_and_note() -> float:
            outputs.append(virtual.control(op="status")["smu_output"])
            return _FailingDetector.read_voltage_v(failing)

        failing.read_voltage_v = read_and_note  # type: ignore[method-assign]
        station.detector = failing  # type: ignore[assignment]
        with pytest.raises(InstrumentError, match="injected failure during the EL reading"):
            run_el_probe(el_scan_path, config, station=station, chips=(truth["col"][chips], truth["row"][chips]))
        station.detector = detector
        assert outputs == [False, True, False, True]  # it failed with current flowing ...
        assert_station_safe(virtual, station, config)  # ... and the output is off, Z at the safe height
    assert read_el_reference(el_scan_path) is None  # nothing half-probed is written


def test_a_dropped_source_meter_connection_is_reconnected_to_switch_the_output_off(virtual, el_world, truth, config):
    chips = known_chips(truth, per_mode=0, good=3)
    cols, rows = truth["col"][chips], truth["row"][chips]
    with station_on(virtual) as station:
        before = virtual.control(op="status")["commands"].get("smu", 0)
        probe_chips(station, el_world.layout, el_world.placement, (cols[:1], rows[:1]), config, focus_z_um=2000.0)
        per_chip = virtual.control(op="status")["commands"]["smu"] - before
        virtual.inject_fault("smu", "disconnect", at_command=per_chip + per_chip // 2)  # within the second chip
        with pytest.raises(InstrumentError, match="smu"):
            probe_chips(station, el_world.layout, el_world.placement, (cols, rows), config, focus_z_um=2000.0)
        assert_station_safe(virtual, station, config)


def test_abort_stops_between_chips_and_writes_nothing(virtual, el_world, truth, el_scan_path, config) -> None:
    chips = known_chips(truth, per_mode=0, good=6)
    abort = threading.Event()

    def on_progress(progress: ElProbeProgress) -> None:
        if progress.phase == "probing" and progress.done == 2:
            abort.set()

    with station_on(virtual) as station:
        with pytest.raises(ElProbeAborted, match="aborted after 2 of 6 chips; nothing was written"):
            run_el_probe(
                el_scan_path,
                config,
                station=station,
                chips=(truth["col"][chips], truth["row"][chips]),
                on_progress=on_progress,
                abort=abort,
            )
        assert_station_safe(virtual, station, config)
    assert read_el_reference(el_scan_path) is None


def test_without_the_presence_check_a_missing_chip_reads_open(virtual, el_world, truth, config) -> None:
    chips = known_chips(truth, per_mode=1, good=5)
    blind = ElProbeConfig(probe=ElProbeSettings(contact_z_um=config.probe.contact_z_um, presence_check=False))
    with station_on(virtual) as station:
        reference = probe_chips(
            station, el_world.layout, el_world.placement, (truth["col"][chips], truth["row"][chips]), blind
        )
    expected = truth["el_result"][chips].copy()
    expected[expected == ElFailMode.MISSING] = ElFailMode.OPEN  # electrically the same: no current, no light
    np.testing.assert_array_equal(reference.records["fail_mode"], expected)
    assert reference.presence_signal_v is None


def test_bad_settings_and_chips_are_refused_before_anything_moves(
    virtual, el_world, truth, el_scan_path, config
) -> None:
    with pytest.raises(ValueError, match=r"safe_z_um: 4900 µm \+ approach_gap_um 200 µm must be at most contact_z_um"):
        ElProbeSettings(contact_z_um=5000.0, safe_z_um=4900.0)
    path = el_scan_path.with_name("probe.toml")
    path.write_text("[probe]\noverdrive_um = 500\n[el_test]\ntest_current_a = 2.0\n")
    with pytest.raises(SettingsError) as caught:
        load_el_probe_config(path)
    problems = "\n".join(caught.value.problems)
    assert "probe.contact_z_um: missing" in problems
    assert "probe.overdrive_um: 500 is outside the allowed range [0, 100] µm" in problems
    assert "el_test.test_current_a: 2.0 is outside the allowed range" in problems
    path.write_text(el_probe_config_to_toml(config))
    assert load_el_probe_config(path) == config
    off_wafer = np.argwhere(~el_world.layout.physical_mask())[0]
    with station_on(virtual) as station:
        before = station.stage.positions_um()
        with pytest.raises(ValueError, match=r"1 chip\(s\) not on the substrate"):
            run_el_probe(el_scan_path, config, station=station, chips=([off_wafer[1]], [off_wafer[0]]))
        with pytest.raises(ValueError, match="chips given twice"):
            run_el_probe(el_scan_path, config, station=station, chips=(truth["col"][[0, 0]], truth["row"][[0, 0]]))
        too_high = ElProbeConfig(probe=ElProbeSettings(contact_z_um=99_000.0), el_test=ElTestCriteria())
        beyond = r"outside the stage's Z travel 0\.\.[\d.]+ µm: contact_z_um \+ overdrive_um = 99020 µm"
        with pytest.raises(ValueError, match=beyond):
            run_el_probe(el_scan_path, too_high, station=station, chips=(truth["col"][:1], truth["row"][:1]))
        assert station.stage.positions_um() == before


def test_probe_command(
    el_profile_path: Path, truth: dict[str, np.ndarray], el_scan_path: Path, tmp_path: Path, capsys
) -> None:
    station = tmp_path / "station.toml"
    text = STATION.read_text()
    station.write_text(re.sub(r'virtual_profile = ".*"', f'virtual_profile = "{el_profile_path}"', text))
    config = tmp_path / "probe.toml"
    config.write_text(f"[probe]\ncontact_z_um = {load_profile(el_profile_path).stage.probe_contact_z_um}\n")
    code = main(["probe", str(el_scan_path), "--config", str(config), "--station", str(station), "--chips", "6"])
    assert code == 0, capsys.readouterr().err
    assert "probed 6 chips" in capsys.readouterr().out
    reference = read_el_reference(el_scan_path)
    expected = {
        (int(c), int(r)): int(e) for c, r, e in zip(truth["col"], truth["row"], truth["el_result"], strict=True)
    }
    assert all(expected[(int(c), int(r))] == int(m) for c, r, m in reference.records[["col", "row", "fail_mode"]])
    config.write_text("[probe]\n")  # no contact height: refused before anything moves
    assert main(["probe", str(el_scan_path), "--config", str(config), "--station", str(station)]) == 2
    assert "contact_z_um: missing" in capsys.readouterr().err
