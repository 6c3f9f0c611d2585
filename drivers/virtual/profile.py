"""The wafer profile: every parameter of a virtual wafer and station, read from a seeded TOML file.

The substrate and grid are declared exactly as in a recipe (``[substrate]``, ``[grid]``). The same profile
(and seed) always gives the same wafer: chip properties are pure functions of the seed and the
chip index, and the wafer-scale defects (particles, scratches, clusters, edge damage) are drawn from a generator
seeded with it. ``resources/profiles/*.toml`` hold examples; every field is documented here.

Physics units: the ABC model is normalised so that B = 1; ``unit_density_w_per_cm2`` is the absorbed excitation
density that gives G = 1 and ``unit_current_density_a_per_cm2`` the injected current density that gives G = 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from inspection.recipe import GridSettings, SubstrateSettings
from inspection.settings import from_mapping, load_toml, setting
from inspection.wafer import WaferLayout


def _ordered(name: str, pair: tuple[float, float]) -> None:
    if len(pair) != 2 or pair[0] > pair[1]:
        raise ValueError(f"{name}: {list(pair)!r} must be [low, high] with low <= high")


@dataclass(frozen=True)
class LoadingSpec:
    """How far from nominal the wafer lands on the chuck (drawn once from the seed)."""

    max_offset_um: float = setting(500.0, minimum=0.0, maximum=5000.0, unit="µm")
    max_rotation_deg: float = setting(0.5, minimum=0.0, maximum=3.0, unit="°")


@dataclass(frozen=True)
class EmitterSpec:
    """Per-chip physics of a good chip (ABC model with B = 1) and its electrical behaviour."""

    a_bulk: float = setting(0.05, minimum=0.0, maximum=100.0, doc="SRH rate of the epitaxy")
    sidewall_a_um: float = setting(3.0, minimum=0.0, maximum=1000.0, unit="µm", doc="A += this × perimeter/area")
    a_spread: float = setting(0.15, minimum=0.0, maximum=2.0, doc="log-normal σ of A between chips")
    c_auger: float = setting(0.02, minimum=0.0, maximum=10.0)
    extraction: float = setting(0.05, minimum=1e-4, maximum=1.0, doc="light extraction × collection")
    extraction_spread: float = setting(0.03, minimum=0.0, maximum=1.0, doc="log-normal σ of extraction")
    unit_density_w_per_cm2: float = setting(100.0, minimum=1e-3, maximum=1e6, unit="W/cm²")
    unit_current_density_a_per_cm2: float = setting(10.0, minimum=1e-3, maximum=1e6, unit="A/cm²")
    wavelength_center_nm: float = setting(455.0, minimum=350.0, maximum=1100.0, unit="nm")
    wavelength_edge_shift_nm: float = setting(3.0, minimum=-50.0, maximum=50.0, unit="nm", doc="centre to edge")
    wavelength_ripple_nm: float = setting(0.6, minimum=0.0, maximum=20.0, unit="nm", doc="smooth mm-scale variation")
    wavelength_noise_nm: float = setting(0.3, minimum=0.0, maximum=10.0, unit="nm", doc="chip-to-chip σ")
    fwhm_nm: float = setting(20.0, minimum=1.0, maximum=200.0, unit="nm")
    fwhm_noise_nm: float = setting(0.8, minimum=0.0, maximum=20.0, unit="nm")
    ideality: float = setting(2.5, minimum=1.0, maximum=10.0)
    saturation_current_a: float = setting(3e-23, minimum=1e-40, maximum=1e-6, unit="A")
    series_resistance_ohm: float = setting(200.0, minimum=0.0, maximum=1e7, unit="Ω")
    shunt_resistance_ohm: float = setting(1e12, minimum=1.0, maximum=1e16, unit="Ω")


@dataclass(frozen=True)
class DefectSpec:
    """Defect rates (fractions of chips) and wafer-scale defect densities."""

    dead_fraction: float = setting(0.002, minimum=0.0, maximum=1.0)
    dim_fraction: float = setting(0.004, minimum=0.0, maximum=1.0)
    dim_a_factor: tuple[float, ...] = setting((5.0, 30.0), doc="[low, high] multiplier of A for dim chips")
    leaky_fraction: float = setting(0.003, minimum=0.0, maximum=1.0)
    leak_strength: tuple[float, ...] = setting((0.5, 5.0), doc="[low, high] shunt S of leaky chips")
    leak_saturation_n: float = setting(0.3, minimum=1e-6, maximum=100.0, doc="n at which the shunt saturates")
    leak_shunt_scale_ohm: float = setting(1e7, minimum=1.0, maximum=1e14, unit="Ω", doc="R_shunt = this / S")
    bright_fraction: float = setting(0.001, minimum=0.0, maximum=1.0)
    bright_factor: float = setting(1.6, minimum=1.0, maximum=10.0)
    missing_fraction: float = setting(0.001, minimum=0.0, maximum=1.0)
    el_open_fraction: float = setting(0.0005, minimum=0.0, maximum=1.0, doc="open contact: no PL signature")
    el_series_fraction: float = setting(0.0005, minimum=0.0, maximum=1.0, doc="high series R: no PL signature")
    el_series_factor: float = setting(20.0, minimum=1.0, maximum=1e6)
    particles_per_cm2: float = setting(0.3, minimum=0.0, maximum=100.0, unit="1/cm²")
    particle_radius_um: tuple[float, ...] = setting((30.0, 250.0))
    particle_transmission: tuple[float, ...] = setting((0.02, 0.3))
    scratches_per_cm2: float = setting(0.05, minimum=0.0, maximum=10.0, unit="1/cm²")
    scratch_length_mm: tuple[float, ...] = setting((3.0, 15.0))
    scratch_width_um: tuple[float, ...] = setting((5.0, 25.0))
    wavelength_clusters_per_cm2: float = setting(0.1, minimum=0.0, maximum=10.0, unit="1/cm²")
    broadened_clusters_per_cm2: float = setting(0.1, minimum=0.0, maximum=10.0, unit="1/cm²")
    cluster_radius_mm: tuple[float, ...] = setting((0.3, 1.5))
    cluster_wavelength_shift_nm: tuple[float, ...] = setting((3.0, 8.0))
    cluster_broadening_factor: tuple[float, ...] = setting((1.5, 2.2))
    edge_damage_arcs: int = setting(2, minimum=0, maximum=50)
    edge_damage_depth_mm: tuple[float, ...] = setting((0.5, 2.0))
    edge_damage_arc_deg: tuple[float, ...] = setting((5.0, 20.0))

    def __post_init__(self) -> None:
        for name in (
            "dim_a_factor",
            "leak_strength",
            "particle_radius_um",
            "particle_transmission",
            "scratch_length_mm",
            "scratch_width_um",
            "cluster_radius_mm",
            "cluster_wavelength_shift_nm",
            "cluster_broadening_factor",
            "edge_damage_depth_mm",
            "edge_damage_arc_deg",
        ):
            _ordered(name, getattr(self, name))
        point_defects = (
            self.dead_fraction
            + self.dim_fraction
            + self.leaky_fraction
            + self.bright_fraction
            + self.missing_fraction
            + self.el_open_fraction
            + self.el_series_fraction
        )
        if point_defects > 1.0:
            raise ValueError(f"defects: the point-defect fractions add up to {point_defects:g}, more than 1")


@dataclass(frozen=True)
class OpticsSpec:
    """Excitation spot, detector chain and laser."""

    spot_sigma_um: float = setting(8.0, minimum=0.2, maximum=500.0, unit="µm", doc="Gaussian σ of the laser spot")
    detector_gain_v_per_w: float = setting(4000.0, minimum=1e-3, maximum=1e9, unit="V/W", doc="PL power → volts")
    scatter_v_per_w: float = setting(0.05, minimum=0.0, maximum=1e6, unit="V/W", doc="filtered laser leak")
    background_v: float = setting(0.002, minimum=0.0, maximum=10.0, unit="V", doc="dark offset")
    read_noise_v: float = setting(0.0002, minimum=0.0, maximum=1.0, unit="V")
    shot_noise_v: float = setting(2e-6, minimum=0.0, maximum=1.0, unit="V", doc="variance per volt of signal")
    laser_wavelength_nm: float = setting(405.0, minimum=200.0, maximum=1100.0, unit="nm")
    laser_max_power_w: float = setting(0.1, minimum=1e-4, maximum=10.0, unit="W")
    laser_drift_fraction: float = setting(0.01, minimum=0.0, maximum=0.2, doc="slow output power wander")


@dataclass(frozen=True)
class StageSpec:
    """Travel, speed and probe geometry of the XYZ stage."""

    travel_xy_mm: float = setting(300.0, minimum=50.0, maximum=1000.0, unit="mm", doc="full travel, centred")
    travel_z_mm: float = setting(10.0, minimum=1.0, maximum=100.0, unit="mm")
    max_velocity_xy_mm_s: float = setting(300.0, minimum=1.0, maximum=3000.0, unit="mm/s")
    accel_xy_mm_s2: float = setting(3000.0, minimum=10.0, maximum=100000.0, unit="mm/s²")
    max_velocity_z_mm_s: float = setting(5.0, minimum=0.1, maximum=100.0, unit="mm/s")
    accel_z_mm_s2: float = setting(50.0, minimum=1.0, maximum=10000.0, unit="mm/s²")
    probe_contact_z_um: float = setting(5000.0, minimum=0.0, maximum=100000.0, unit="µm")


@dataclass(frozen=True)
class ElTestSpec:
    """How the reference EL prober tests chips and what counts as a fail (for the ground-truth export)."""

    test_current_a: float = setting(5e-4, minimum=1e-9, maximum=1.0, unit="A")
    compliance_v: float = setting(10.0, minimum=0.1, maximum=200.0, unit="V")
    vf_range_v: tuple[float, ...] = setting((2.3, 3.8), doc="[low, high] acceptable forward voltage")
    reverse_voltage_v: float = setting(-5.0, minimum=-200.0, maximum=0.0, unit="V")
    max_reverse_current_a: float = setting(1e-8, minimum=1e-15, maximum=1.0, unit="A")
    min_el_fraction: float = setting(0.5, minimum=0.0, maximum=1.0, doc="fail below this × wafer median EL")
    dead_el_fraction: float = setting(0.05, minimum=0.0, maximum=1.0, doc="'dead' below this × median")

    def __post_init__(self) -> None:
        _ordered("vf_range_v", self.vf_range_v)


@dataclass(frozen=True)
class WaferProfile:
    """Everything about one virtual wafer and its station. Load with :func:`load_profile`."""

    name: str = setting("virtual wafer")
    seed: int = setting(1, minimum=0, maximum=2**63 - 1)
    substrate: SubstrateSettings = field(
        default_factory=lambda: SubstrateSettings(diameter_mm=50.8, edge_exclusion_mm=2.0)
    )
    grid: GridSettings = field(
        default_factory=lambda: GridSettings(
            pitch_x_um=100.0, pitch_y_um=100.0, chip_width_um=60.0, chip_height_um=60.0
        )
    )
    loading: LoadingSpec = field(default_factory=LoadingSpec)
    emitter: EmitterSpec = field(default_factory=EmitterSpec)
    defects: DefectSpec = field(default_factory=DefectSpec)
    optics: OpticsSpec = field(default_factory=OpticsSpec)
    stage: StageSpec = field(default_factory=StageSpec)
    el_test: ElTestSpec = field(default_factory=ElTestSpec)

    def __post_init__(self) -> None:
        radius_um = self.substrate.diameter_mm * 500.0
        if self.stage.travel_xy_mm * 500.0 < radius_um + self.loading.max_offset_um:
            needed_mm = 2 * (radius_um + self.loading.max_offset_um) / 1000
            raise ValueError(
                f"stage.travel_xy_mm: {self.stage.travel_xy_mm:g} mm cannot reach the edge of a "
                f"{self.substrate.diameter_mm:g} mm wafer (needs >= {needed_mm:g})"
            )

    def layout(self) -> WaferLayout:
        """The wafer's substrate and chip grid."""
        return WaferLayout(self.substrate.substrate(), self.grid.grid())


def load_profile(path: str | Path) -> WaferProfile:
    """Read and validate a wafer profile TOML file (every problem reported at once)."""
    return from_mapping(WaferProfile, load_toml(path), source=str(path))
