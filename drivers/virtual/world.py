"""The simulated wafer: per-chip truth from a :class:`~drivers.virtual.profile.WaferProfile`, and what the
station's sensors see of it.

Nothing per chip is stored. Every chip property is a pure function of the profile seed and the chip index
(a counter-based hash feeds the random draws), so an 8" wafer with tens of millions of chips is created in
milliseconds and any region is evaluated on demand, identically every time. Only the wafer-scale defects
(particles, scratches, wavelength/broadening clusters, edge-damage arcs) are drawn up front, a few hundred
objects at most.

Physics (``domain.md`` §2): ABC recombination with a sidewall term that grows as chips shrink; leaky chips have
a shunt loss ``S·n/(1 + n/n_sat)`` that dominates at low excitation and saturates at high excitation, so their
low/high-power efficiency ratio drops while they look almost normal at high power; dim chips have a large A
(dim at every power); dead chips emit nothing; missing chips do not even scatter laser light. EL-only failures
(open contact, high series resistance) have no PL signature at all.

The ground truth (:meth:`WaferWorld.truth_rows`, :func:`export_truth`) is for tests and training only; the
inspection pipeline never reads it. :func:`export_el_csv` writes the EL part of it as a prober's CSV export, which
the inspection imports like real EL reference data (``inspection.el_reference``, docs/el-reference.md).
"""

from __future__ import annotations

import csv
import dataclasses
import enum
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from cext.pl_render import carrier_density, line_band, render_line
from scipy.special import erf

from drivers.virtual.profile import ElTestSpec, WaferProfile
from inspection.el_reference import DEFAULT_FAIL_CODES, ElFailMode, ElTestCriteria, decide_fail_modes
from inspection.wafer import Placement, WaferLayout

PLANCK_NM_V = 1239.84198  # photon energy in eV = this / wavelength in nm: watts of light per amp of photons
THERMAL_VOLTAGE_V = 0.025852  # kT/q at 300 K


class DefectFlag(enum.IntFlag):
    """What is wrong with a chip (several can apply)."""

    NONE = 0
    MISSING = 1 << 0
    DEAD = 1 << 1
    DIM = 1 << 2
    LEAKY = 1 << 3
    BRIGHT = 1 << 4
    WAVELENGTH_SHIFT = 1 << 5
    BROADENED = 1 << 6
    PARTICLE = 1 << 7
    SCRATCH = 1 << 8
    EDGE_DAMAGE = 1 << 9
    EL_OPEN = 1 << 10
    EL_SERIES_RESISTANCE = 1 << 11


ElResult = ElFailMode
"""Outcome of the reference EL test of a chip (first failing criterion in this order): the inspection's
:class:`~inspection.el_reference.ElFailMode`, so the truth and imported or probed EL data share one set of codes."""


# -- counter-based random numbers -------------------------------------------------------------------------------

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: a bijective scramble of 64-bit integers."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def hash_uniform(seed: int, stream: int, col: np.ndarray, row: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) numbers that depend only on (seed, stream, col, row)."""
    with np.errstate(over="ignore"):
        key = _mix64(np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * _GOLDEN + np.uint64(stream))
        key = _mix64(key ^ (np.asarray(col, dtype=np.int64).astype(np.uint64) * np.uint64(0xD6E8FEB86659FD93)))
        key = _mix64(key ^ (np.asarray(row, dtype=np.int64).astype(np.uint64) * np.uint64(0xA0761D6478BD642F)))
    return (key >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def hash_normal(seed: int, stream: int, col: np.ndarray, row: np.ndarray) -> np.ndarray:
    """Standard normal numbers that depend only on (seed, stream, col, row) (Box–Muller)."""
    u1 = hash_uniform(seed, 2 * stream + 1000, col, row)
    u2 = hash_uniform(seed, 2 * stream + 1001, col, row)
    return np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)


# -- per-chip truth ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChipTruth:
    """Ground truth of a set of chips (all arrays have the length of ``col``)."""

    col: np.ndarray
    row: np.ndarray
    x_um: np.ndarray
    y_um: np.ndarray
    present: np.ndarray  # a chip is physically there (on the substrate and not missing)
    flags: np.ndarray  # DefectFlag bits, uint16
    a_coeff: np.ndarray
    c_coeff: np.ndarray
    shunt: np.ndarray
    excitation: np.ndarray  # fraction of the light on the chip that gets absorbed (particles shadow it)
    extraction: np.ndarray  # PL/EL light that leaves the chip and reaches the detectors, per emitted watt
    wavelength_nm: np.ndarray
    fwhm_nm: np.ndarray
    series_ohm: np.ndarray
    shunt_ohm: np.ndarray


@dataclass(frozen=True)
class WaferDefects:
    """Wafer-scale defects, drawn once from the seed (wafer frame, µm)."""

    particles: np.ndarray  # (n, 4): x, y, radius, transmission
    scratches: np.ndarray  # (n, 5): x0, y0, x1, y1, width
    wavelength_clusters: np.ndarray  # (n, 4): x, y, radius, shift_nm
    broadened_clusters: np.ndarray  # (n, 4): x, y, radius, factor
    edge_arcs: np.ndarray  # (n, 3): centre angle (rad), half width (rad), depth (µm)


class WaferWorld:
    """One virtual wafer on the chuck.

    Parameters
    ----------
    profile
        The wafer profile; the same profile gives the same wafer and the same placement.
    """

    def __init__(self, profile: WaferProfile) -> None:
        self.profile = profile
        self.seed = profile.seed
        self.layout: WaferLayout = profile.layout()
        grid = self.layout.grid
        self._radius_um = self.layout.substrate.radius_um
        rng = np.random.default_rng([profile.seed, 11])
        offset_r = profile.loading.max_offset_um * math.sqrt(rng.random())
        offset_angle = 2 * math.pi * rng.random()
        self.placement = Placement(
            offset_x_um=offset_r * math.cos(offset_angle),
            offset_y_um=offset_r * math.sin(offset_angle),
            rotation_deg=float(rng.uniform(-1, 1) * profile.loading.max_rotation_deg),
        )
        self.defects = self._draw_defects(rng)
        # smooth wavelength ripple: a few random plane waves with millimetre wavelengths
        modes = 6
        self._ripple_k = rng.uniform(2 * np.pi / 20_000, 2 * np.pi / 5_000, modes)[:, None] * _unit_vectors(rng, modes)
        self._ripple_phase = rng.uniform(0, 2 * np.pi, modes)
        self._chip_area_cm2 = grid.chip_width_um * grid.chip_height_um * 1e-8
        perimeter_over_area = (
            2 * (grid.chip_width_um + grid.chip_height_um) / (grid.chip_width_um * grid.chip_height_um)
        )
        self._a_nominal = profile.emitter.a_bulk + profile.emitter.sidewall_a_um * perimeter_over_area
        self.generation_per_w = 1.0 / (self._chip_area_cm2 * profile.emitter.unit_density_w_per_cm2)
        optics = profile.optics
        reach_um = 4.0 * optics.spot_sigma_um + 0.5 * max(grid.chip_width_um, grid.chip_height_um)
        self._reach = max(1, math.ceil(reach_um / min(grid.pitch_x_um, grid.pitch_y_um)))
        # the chip arrays of the last line's band (see _band_chips)
        self._last_band: _KeptBand | None = None

    # -- wafer-scale defects ------------------------------------------------------------------------------------
    def _draw_defects(self, rng: np.random.Generator) -> WaferDefects:
        spec = self.profile.defects
        area_cm2 = math.pi * (self._radius_um * 1e-4) ** 2

        def points(density: float) -> tuple[int, np.ndarray, np.ndarray]:
            count = int(rng.poisson(density * area_cm2))
            radius = self._radius_um * np.sqrt(rng.random(count))
            angle = rng.uniform(0, 2 * np.pi, count)
            return count, radius * np.cos(angle), radius * np.sin(angle)

        def between(pair: tuple[float, ...], count: int) -> np.ndarray:
            return rng.uniform(pair[0], pair[1], count)

        n, x, y = points(spec.particles_per_cm2)
        particles = np.column_stack([x, y, between(spec.particle_radius_um, n), between(spec.particle_transmission, n)])
        n, x, y = points(spec.scratches_per_cm2)
        length = between(spec.scratch_length_mm, n) * 1000.0
        direction = rng.uniform(0, np.pi, n)
        scratches = np.column_stack(
            [x, y, x + length * np.cos(direction), y + length * np.sin(direction), between(spec.scratch_width_um, n)]
        )
        n, x, y = points(spec.wavelength_clusters_per_cm2)
        shift = between(spec.cluster_wavelength_shift_nm, n)
        wavelength_clusters = np.column_stack([x, y, between(spec.cluster_radius_mm, n) * 1000.0, shift])
        n, x, y = points(spec.broadened_clusters_per_cm2)
        factor = between(spec.cluster_broadening_factor, n)
        broadened_clusters = np.column_stack([x, y, between(spec.cluster_radius_mm, n) * 1000.0, factor])
        n = spec.edge_damage_arcs
        edge_arcs = np.column_stack(
            [
                rng.uniform(0, 2 * np.pi, n),
                np.radians(between(spec.edge_damage_arc_deg, n)) / 2,
                between(spec.edge_damage_depth_mm, n) * 1000.0,
            ]
        )
        return WaferDefects(particles, scratches, wavelength_clusters, broadened_clusters, edge_arcs)

    # -- truth ----------------------------------------------------------------------------------------------------
    def chip_truth(self, col: np.ndarray, row: np.ndarray) -> ChipTruth:
        """Ground truth of the chips at ``(col, row)`` (any shape, flattened)."""
        col = np.asarray(col, dtype=np.int64).ravel()
        row = np.asarray(row, dtype=np.int64).ravel()
        profile, seed = self.profile, self.seed
        emitter, spec = profile.emitter, profile.defects
        x, y = self.layout.chip_center_um(col, row)
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        on_substrate = self.layout.chip_on_substrate(col, row)
        flags = np.zeros(col.shape, dtype=np.uint16)

        # point defects: one uniform number picks at most one of them per chip
        pick = hash_uniform(seed, 0, col, row)
        thresholds = np.cumsum(
            [
                spec.missing_fraction,
                spec.dead_fraction,
                spec.dim_fraction,
                spec.leaky_fraction,
                spec.bright_fraction,
                spec.el_open_fraction,
                spec.el_series_fraction,
            ]
        )
        kinds = [
            DefectFlag.MISSING,
            DefectFlag.DEAD,
            DefectFlag.DIM,
            DefectFlag.LEAKY,
            DefectFlag.BRIGHT,
            DefectFlag.EL_OPEN,
            DefectFlag.EL_SERIES_RESISTANCE,
        ]
        lower = 0.0
        for upper, kind in zip(thresholds, kinds, strict=True):
            flags[(pick >= lower) & (pick < upper)] |= np.uint16(kind)
            lower = upper

        # wafer-scale defects
        transmission = np.ones(col.shape)
        half_chip = 0.5 * math.hypot(self.layout.grid.chip_width_um, self.layout.grid.chip_height_um)
        for px, py, radius, trans in self.defects.particles:
            hit = (x - px) ** 2 + (y - py) ** 2 <= (radius + half_chip) ** 2
            flags[hit] |= np.uint16(DefectFlag.PARTICLE)
            transmission[hit] = np.minimum(transmission[hit], trans)
        damage = hash_uniform(seed, 5, col, row)
        for scratch in self.defects.scratches:
            hit = _distance_to_segment(x, y, scratch[:4]) <= 0.5 * scratch[4] + half_chip
            flags[hit] |= np.uint16(DefectFlag.SCRATCH)
            flags[hit & (damage < 0.5)] |= np.uint16(DefectFlag.DEAD)
            flags[hit & (damage >= 0.5)] |= np.uint16(DefectFlag.DIM | DefectFlag.LEAKY)
        if len(self.defects.edge_arcs):
            radius_of_chip = np.hypot(x, y)
            angle = np.arctan2(y, x)
            for centre, half_width, depth in self.defects.edge_arcs:
                off_angle = np.abs(np.angle(np.exp(1j * (angle - centre))))
                hit = (off_angle <= half_width) & (self._radius_um - radius_of_chip <= depth)
                flags[hit] |= np.uint16(DefectFlag.EDGE_DAMAGE)
                flags[hit & (damage < 0.6)] |= np.uint16(DefectFlag.DEAD)
                flags[hit & (damage >= 0.6)] |= np.uint16(DefectFlag.DIM)

        # recombination
        a_coeff = self._a_nominal * np.exp(emitter.a_spread * hash_normal(seed, 1, col, row))
        dim = (flags & np.uint16(DefectFlag.DIM)) != 0
        low, high = spec.dim_a_factor
        a_coeff[dim] *= low + (high - low) * hash_uniform(seed, 2, col[dim], row[dim])
        c_coeff = emitter.c_auger * np.exp(0.1 * hash_normal(seed, 3, col, row))
        leaky = (flags & np.uint16(DefectFlag.LEAKY)) != 0
        shunt = np.zeros(col.shape)
        low, high = spec.leak_strength
        shunt[leaky] = low + (high - low) * hash_uniform(seed, 4, col[leaky], row[leaky])
        shunt_ohm = np.full(col.shape, emitter.shunt_resistance_ohm)
        shunt_ohm[leaky] = np.minimum(emitter.shunt_resistance_ohm, spec.leak_shunt_scale_ohm / shunt[leaky])

        # light
        extraction = emitter.extraction * np.exp(emitter.extraction_spread * hash_normal(seed, 9, col, row))
        extraction[(flags & np.uint16(DefectFlag.BRIGHT)) != 0] *= spec.bright_factor
        extraction[(flags & np.uint16(DefectFlag.DEAD)) != 0] = 0.0
        missing = (flags & np.uint16(DefectFlag.MISSING)) != 0
        present = on_substrate & ~missing
        excitation = np.where(present, transmission, 0.0)
        extraction = np.where(present, extraction * transmission, 0.0)

        # spectrum
        r2 = (x * x + y * y) / self._radius_um**2
        ripple = np.cos(np.outer(x, self._ripple_k[:, 0]) + np.outer(y, self._ripple_k[:, 1]) + self._ripple_phase)
        wavelength = (
            emitter.wavelength_center_nm
            + emitter.wavelength_edge_shift_nm * r2
            + emitter.wavelength_ripple_nm * ripple.sum(axis=1) / math.sqrt(len(self._ripple_phase) / 2)
            + emitter.wavelength_noise_nm * hash_normal(seed, 7, col, row)
        )
        fwhm = emitter.fwhm_nm + emitter.fwhm_noise_nm * hash_normal(seed, 8, col, row)
        for cx, cy, radius, shift in self.defects.wavelength_clusters:
            hit = (x - cx) ** 2 + (y - cy) ** 2 <= radius**2
            wavelength[hit] += shift
            flags[hit] |= np.uint16(DefectFlag.WAVELENGTH_SHIFT)
        for cx, cy, radius, factor in self.defects.broadened_clusters:
            hit = (x - cx) ** 2 + (y - cy) ** 2 <= radius**2
            fwhm[hit] *= factor
            flags[hit] |= np.uint16(DefectFlag.BROADENED)

        series = np.full(col.shape, emitter.series_resistance_ohm)
        series[(flags & np.uint16(DefectFlag.EL_SERIES_RESISTANCE)) != 0] *= spec.el_series_factor
        flags[~on_substrate] = 0
        return ChipTruth(
            col=col,
            row=row,
            x_um=x,
            y_um=y,
            present=present,
            flags=flags,
            a_coeff=a_coeff,
            c_coeff=c_coeff,
            shunt=shunt,
            excitation=excitation,
            extraction=extraction,
            wavelength_nm=wavelength,
            fwhm_nm=np.maximum(fwhm, 1.0),
            series_ohm=series,
            shunt_ohm=shunt_ohm,
        )

    # -- PL -------------------------------------------------------------------------------------------------------
    def _grid_units(self, x_um: np.ndarray, y_um: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Wafer-frame positions → fractional (col, row); chip centres sit at integers."""
        grid = self.layout.grid
        anchor_col, anchor_row = self.layout.anchor_index
        c, s = math.cos(math.radians(grid.rotation_deg)), math.sin(math.radians(grid.rotation_deg))
        dx = np.asarray(x_um, dtype=np.float64) - grid.origin_x_um
        dy = np.asarray(y_um, dtype=np.float64) - grid.origin_y_um
        return (c * dx + s * dy) / grid.pitch_x_um + anchor_col, (-s * dx + c * dy) / grid.pitch_y_um + anchor_row

    def _grid_frame(self) -> tuple[float, ...]:
        """The chip grid in the wafer frame, as the kernels take it (the transform of :meth:`_grid_units`)."""
        grid = self.layout.grid
        anchor_col, anchor_row = self.layout.anchor_index
        c, s = math.cos(math.radians(grid.rotation_deg)), math.sin(math.radians(grid.rotation_deg))
        return (grid.origin_x_um, grid.origin_y_um, c, s, grid.pitch_x_um, grid.pitch_y_um, anchor_col, anchor_row)

    def _pl_gain_v_per_w(self, truth: ChipTruth) -> np.ndarray:
        optics = self.profile.optics
        stokes = optics.laser_wavelength_nm / truth.wavelength_nm  # photon energy lost from pump to emission
        return optics.detector_gain_v_per_w * truth.extraction * stokes

    def pl_signal_v(self, x_um: np.ndarray, y_um: np.ndarray, power_w: np.ndarray, t_s: np.ndarray) -> np.ndarray:
        """Photodetector voltage for a sequence of spot positions (wafer frame) and laser powers, with noise.

        The noise is seeded by the positions and powers, so measuring the same line again (a resumed scan)
        gives the same samples.
        """
        x_um = np.ascontiguousarray(x_um, dtype=np.float64)
        y_um = np.ascontiguousarray(y_um, dtype=np.float64)
        power = np.ascontiguousarray(np.broadcast_to(power_w, x_um.shape), dtype=np.float64)
        key = [self.seed, 17, x_um.size]
        if x_um.size:
            key += [round(v * 100) & 0xFFFFFFFF for v in (x_um.flat[0], y_um.flat[0], x_um.flat[-1], y_um.flat[-1])]
            key.append(round(float(power.mean()) * 1e7) & 0xFFFFFFFF)
        # the kernel draws sample i's noise from (this 64-bit key, i), so the draws do not depend on the threads
        noise_key = int(np.random.SeedSequence(key).generate_state(1, dtype=np.uint64)[0])
        return self._render(x_um, y_um, power, noise_key)

    def pl_signal_clean_v(self, x_um: np.ndarray, y_um: np.ndarray, power_w: np.ndarray) -> np.ndarray:
        """Noiseless detector voltage (no background) for spot positions in the wafer frame."""
        return self._render(x_um, y_um, power_w, None)

    def _render(self, x_um: np.ndarray, y_um: np.ndarray, power_w: np.ndarray, noise_key: int | None) -> np.ndarray:
        """PL detector voltage of spot positions: noiseless, or with the detector noise seeded by ``noise_key``."""
        x_um = np.ascontiguousarray(x_um, dtype=np.float64)
        if x_um.size == 0:
            return np.zeros(x_um.shape)
        y_um = np.ascontiguousarray(np.broadcast_to(y_um, x_um.shape), dtype=np.float64).ravel()
        power_w = np.ascontiguousarray(np.broadcast_to(power_w, x_um.shape), dtype=np.float64).ravel()
        grid, optics = self.layout.grid, self.profile.optics
        frame = self._grid_frame()
        sigma = optics.spot_sigma_um
        geometry = (
            0.5 * grid.chip_width_um / grid.pitch_x_um,
            0.5 * grid.chip_height_um / grid.pitch_y_um,
            sigma / grid.pitch_x_um,
            sigma / grid.pitch_y_um,
        )
        # only the chips some sample lights: along a chip row, one or two per column
        col0, band_row0, band_start = line_band(x_um.ravel(), y_um, frame, *geometry, self._reach)
        arrays = self._band_chips(col0, band_row0, band_start)
        signal = render_line(
            x_um.ravel(),
            y_um,
            power_w,
            frame,
            col0,
            band_row0,
            band_start,
            arrays["a"],
            arrays["c"],
            arrays["s"],
            arrays["saturation"],
            arrays["exc"],
            arrays["gain"],
            arrays["scatter"],
            *geometry,
            self.generation_per_w,
            self._reach,
            noise_key,
            optics.read_noise_v,
            optics.shot_noise_v,
            optics.background_v,
        )
        return signal.reshape(x_um.shape)

    def _band_chips(self, col0: int, band_row0: np.ndarray, band_start: np.ndarray) -> dict[str, np.ndarray]:
        """The render kernel's per-slot chip arrays for a band of chips (see :func:`cext.pl_render.render_line`).

        The last band and its arrays are kept: raster lines closer than the chip pitch (the demo recipe's 25 µm
        lines over 100 µm chips) light the same chips, or mostly the same ones on a rotated wafer, and looking up
        their truth costs as much as a fifth of a line's render. Chips of the new band that the kept one holds
        take their values from it; only the others are looked up. Chip truth is a pure function of the seed and
        the chip, so the result is what a fresh look-up of every chip gives; kept arrays are never written to.
        """
        key = (int(col0), band_row0.tobytes(), band_start.tobytes())
        kept = self._last_band
        if kept is not None and kept.key == key:
            return kept.arrays
        optics = self.profile.optics
        counts = np.diff(band_start)
        slots = int(band_start[-1])
        cols = np.repeat(np.arange(col0, col0 + counts.size, dtype=np.int64), counts)
        rows = np.repeat(band_row0 - band_start[:-1], counts) + np.arange(slots, dtype=np.int64)
        arrays = {name: np.zeros(slots) for name in ("a", "c", "s", "exc", "gain", "scatter")}
        arrays["a"][:] = 1.0
        todo = self.layout.in_box(cols, rows)
        if kept is not None:
            new_slots, old_slots = kept.slots_of(cols, rows)
            for name, values in arrays.items():
                values[new_slots] = kept.arrays[name][old_slots]
            todo[new_slots] = False
        truth = self.chip_truth(cols[todo], rows[todo])
        arrays["a"][todo] = truth.a_coeff
        arrays["c"][todo] = truth.c_coeff
        arrays["s"][todo] = truth.shunt
        arrays["exc"][todo] = truth.excitation
        arrays["gain"][todo] = self._pl_gain_v_per_w(truth)
        arrays["scatter"][todo] = np.where(truth.present, optics.scatter_v_per_w, 0.0)
        arrays["saturation"] = np.full(slots, self.profile.defects.leak_saturation_n)
        # one assignment: a render on another thread sees the old or the new band, never half of each
        self._last_band = _KeptBand(key, int(col0), band_row0.copy(), band_start.copy(), arrays)
        return arrays

    def forget_kept_band(self) -> None:
        """Drop the chip arrays kept from the last line (see :meth:`_band_chips`): benchmarks time a line over new
        chips with it. Results never depend on it."""
        self._last_band = None

    def chip_pl_v(self, truth: ChipTruth, absorbed_w: np.ndarray) -> np.ndarray:
        """Detector volts from each chip when it absorbs ``absorbed_w`` (whole spot on the chip)."""
        n = self._carrier_density(truth, np.asarray(absorbed_w, dtype=np.float64) * self.generation_per_w)
        return self._pl_gain_v_per_w(truth) * n * n / self.generation_per_w

    def _carrier_density(self, truth: ChipTruth, generation: np.ndarray) -> np.ndarray:
        generation = np.ascontiguousarray(np.broadcast_to(generation, truth.a_coeff.shape), dtype=np.float64)
        saturation = np.full(truth.a_coeff.shape, self.profile.defects.leak_saturation_n)
        return carrier_density(generation, truth.a_coeff, truth.c_coeff, truth.shunt, saturation)

    def pl_spectrum_w_per_nm(self, x_um: float, y_um: float, power_w: float, wavelength_nm: np.ndarray) -> np.ndarray:
        """PL power density reaching the spectrometer (W/nm) with the spot at ``(x_um, y_um)``, noiseless."""
        wavelength_nm = np.asarray(wavelength_nm, dtype=np.float64)
        col_f, row_f = self._grid_units(np.array([x_um]), np.array([y_um]))
        offsets = np.arange(-self._reach, self._reach + 1, dtype=np.int64)
        col_offsets, row_offsets = np.meshgrid(offsets, offsets)
        cols = int(np.floor(col_f[0] + 0.5)) + col_offsets.ravel()
        rows = int(np.floor(row_f[0] + 0.5)) + row_offsets.ravel()
        keep = self.layout.in_box(cols, rows)
        truth = self.chip_truth(cols[keep], rows[keep])
        grid = self.layout.grid
        sigma = self.profile.optics.spot_sigma_um
        overlap = _overlap_1d(col_f[0] - truth.col, 0.5 * grid.chip_width_um / grid.pitch_x_um, sigma / grid.pitch_x_um)
        overlap *= _overlap_1d(
            row_f[0] - truth.row, 0.5 * grid.chip_height_um / grid.pitch_y_um, sigma / grid.pitch_y_um
        )
        absorbed = power_w * overlap * truth.excitation
        n = self._carrier_density(truth, absorbed * self.generation_per_w)
        emitted_w = truth.extraction * n * n / self.generation_per_w  # IQE × absorbed, times extraction
        sigma_nm = truth.fwhm_nm / (2 * math.sqrt(2 * math.log(2)))
        profile = np.exp(-0.5 * ((wavelength_nm[:, None] - truth.wavelength_nm) / sigma_nm) ** 2)
        profile /= sigma_nm * math.sqrt(2 * math.pi)
        return profile @ emitted_w

    # -- EL -------------------------------------------------------------------------------------------------------
    def chip_under(self, x_um: float, y_um: float) -> tuple[int, int] | None:
        """The chip whose area is under ``(x_um, y_um)`` (wafer frame), if one is physically there."""
        col, row, hit = self.layout.chip_at(np.array([x_um]), np.array([y_um]))
        if not bool(hit[0]):
            return None
        truth = self.chip_truth(col, row)
        return (int(col[0]), int(row[0])) if bool(truth.present[0]) else None

    def _electrical(self, chip: tuple[int, int]) -> ChipTruth:
        return self.chip_truth(np.array([chip[0]]), np.array([chip[1]]))

    def el_voltage_v(self, chip: tuple[int, int], current_a: float) -> float:
        """Terminal voltage with ``current_a`` forced through ``chip`` (an open chip: ±1e9 V, i.e. compliance)."""
        truth = self._electrical(chip)
        return float(self.terminal_voltage_v(truth, np.array([current_a]))[0])

    def el_current_a(self, chip: tuple[int, int], voltage_v: float) -> float:
        """Current through ``chip`` with ``voltage_v`` applied."""
        truth = self._electrical(chip)
        return float(self.terminal_current_a(truth, np.array([voltage_v]))[0])

    def el_light_v(self, chip: tuple[int, int], current_a: float) -> float:
        """Photodetector volts from the EL of ``chip`` driven with ``current_a``."""
        truth = self._electrical(chip)
        return float(self.el_light_from_truth_v(truth, np.array([current_a]))[0])

    def _diode(self) -> tuple[float, float]:
        emitter = self.profile.emitter
        return emitter.saturation_current_a, emitter.ideality * THERMAL_VOLTAGE_V

    def junction_voltage_v(self, truth: ChipTruth, current_a: np.ndarray) -> np.ndarray:
        """Junction voltage at which diode + shunt carry ``current_a`` (vectorised bisection)."""
        saturation, n_vt = self._diode()
        current = np.broadcast_to(np.asarray(current_a, dtype=np.float64), truth.a_coeff.shape)
        low = np.minimum(current * truth.shunt_ohm, 0.0) - 1.0
        high = np.full(current.shape, 60.0 * n_vt)
        for _ in range(80):
            middle = 0.5 * (low + high)
            flowing = saturation * np.expm1(middle / n_vt) + middle / truth.shunt_ohm
            above = flowing > current
            high = np.where(above, middle, high)
            low = np.where(above, low, middle)
        return 0.5 * (low + high)

    def terminal_voltage_v(self, truth: ChipTruth, current_a: np.ndarray) -> np.ndarray:
        current = np.broadcast_to(np.asarray(current_a, dtype=np.float64), truth.a_coeff.shape)
        voltage = self.junction_voltage_v(truth, current) + current * truth.series_ohm
        is_open = ((truth.flags & np.uint16(DefectFlag.EL_OPEN)) != 0) | ~truth.present
        return np.where(is_open & (current != 0), np.copysign(1e9, current), voltage)

    def terminal_current_a(self, truth: ChipTruth, voltage_v: np.ndarray) -> np.ndarray:
        """Current with ``voltage_v`` across the terminals: solve V = Vj + Rs·I(Vj) for Vj by bisection."""
        saturation, n_vt = self._diode()
        voltage = np.broadcast_to(np.asarray(voltage_v, dtype=np.float64), truth.a_coeff.shape)
        low = np.minimum(voltage, 0.0) - 1.0
        high = np.maximum(voltage, 0.0) + 1.0
        high = np.minimum(high, 60.0 * n_vt)
        for _ in range(80):
            middle = 0.5 * (low + high)
            current = saturation * np.expm1(middle / n_vt) + middle / truth.shunt_ohm
            above = middle + current * truth.series_ohm > voltage
            high = np.where(above, middle, high)
            low = np.where(above, low, middle)
        junction = 0.5 * (low + high)
        current = saturation * np.expm1(junction / n_vt) + junction / truth.shunt_ohm
        is_open = ((truth.flags & np.uint16(DefectFlag.EL_OPEN)) != 0) | ~truth.present
        return np.where(is_open, 0.0, current)

    def el_light_from_truth_v(self, truth: ChipTruth, current_a: np.ndarray) -> np.ndarray:
        """EL light on the photodetector (volts) when ``current_a`` flows through each chip."""
        current = np.broadcast_to(np.asarray(current_a, dtype=np.float64), truth.a_coeff.shape)
        junction = self.junction_voltage_v(truth, current)
        radiative_branch_a = np.maximum(current - junction / truth.shunt_ohm, 0.0)
        generation = radiative_branch_a / (self._chip_area_cm2 * self.profile.emitter.unit_current_density_a_per_cm2)
        # under forward drive the leakage path is the explicit shunt resistor, not the PL shunt term
        no_shunt = dataclasses.replace(truth, shunt=np.zeros_like(truth.shunt))
        n = self._carrier_density(no_shunt, generation)
        iqe = np.divide(n * n, generation, out=np.zeros_like(generation), where=generation > 0)
        light_w = iqe * radiative_branch_a * PLANCK_NM_V / truth.wavelength_nm * truth.extraction
        is_open = ((truth.flags & np.uint16(DefectFlag.EL_OPEN)) != 0) | ~truth.present
        return np.where(is_open, 0.0, self.profile.optics.detector_gain_v_per_w * light_w)

    # -- ground truth export --------------------------------------------------------------------------------------
    def truth_rows(self, first_row: int, stop_row: int) -> dict[str, np.ndarray]:
        """Truth and EL reference quantities of every chip on the substrate in rows ``[first_row, stop_row)``."""
        mask = self.layout.physical_mask()[first_row:stop_row]
        rows, cols = np.nonzero(mask)
        rows = rows + first_row
        truth = self.chip_truth(cols, rows)
        el = self.profile.el_test
        forward_v = self.terminal_voltage_v(truth, np.full(cols.shape, el.test_current_a))
        reverse_a = self.terminal_current_a(truth, np.full(cols.shape, el.reverse_voltage_v))
        # the prober sources the test current with a compliance limit: an open chip reads the compliance voltage
        forward_v = np.clip(forward_v, -el.compliance_v, el.compliance_v)
        light_v = self.el_light_from_truth_v(truth, np.full(cols.shape, el.test_current_a))
        pl_low = self.chip_pl_v(truth, 0.0005 * truth.excitation)
        pl_high = self.chip_pl_v(truth, 0.02 * truth.excitation)
        return {
            "col": cols.astype(np.int32),
            "row": rows.astype(np.int32),
            "x_um": truth.x_um,
            "y_um": truth.y_um,
            "flags": truth.flags,
            "present": truth.present,
            "a_coeff": truth.a_coeff,
            "c_coeff": truth.c_coeff,
            "shunt": truth.shunt,
            "extraction": truth.extraction,
            "excitation": truth.excitation,
            "wavelength_nm": truth.wavelength_nm,
            "fwhm_nm": truth.fwhm_nm,
            "series_ohm": truth.series_ohm,
            "shunt_ohm": truth.shunt_ohm,
            "pl_0p5mw_v": pl_low,
            "pl_20mw_v": pl_high,
            "el_forward_v": forward_v,
            "el_reverse_a": reverse_a,
            "el_light_v": light_v,
        }


def classify_el(table: dict[str, np.ndarray], el: ElTestSpec | ElTestCriteria) -> np.ndarray:
    """Reference EL outcome (:class:`ElResult`) per chip from the measured quantities of :meth:`truth_rows`.

    The light limits are fractions of the median EL of the present chips in ``table`` (the whole wafer for
    :func:`export_truth`); the decision is :func:`inspection.el_reference.decide_fail_modes`, the one a station
    probe uses too.
    """
    return decide_fail_modes(
        present=table["present"],
        forward_v=table["el_forward_v"],
        reverse_current_a=table["el_reverse_a"],
        el_intensity=table["el_light_v"],
        criteria=el_test_criteria(el),
    )


def el_test_criteria(el: ElTestSpec | ElTestCriteria) -> ElTestCriteria:
    """The inspection's :class:`~inspection.el_reference.ElTestCriteria` of a profile's ``[el_test]`` section."""
    if isinstance(el, ElTestCriteria):
        return el
    return ElTestCriteria(**dataclasses.asdict(el))


def export_truth(world: WaferWorld, path: str | Path, *, rows_per_chunk: int = 512) -> int:
    """Write the ground truth and the EL reference result of every chip to an HDF5 file; return the chip count.

    Layout: one group ``/chips`` with one 1-D dataset per quantity (see :meth:`WaferWorld.truth_rows`) plus
    ``el_result`` (:class:`ElResult` codes), attributes ``profile_name``, ``seed``, ``placement_*`` and the
    enum tables ``defect_flags`` / ``el_results`` as JSON-like name=value strings.
    """
    path = Path(path)
    temporary = path.with_suffix(path.suffix + ".partial")
    count = 0
    with h5py.File(temporary, "w") as out:
        group = out.create_group("chips")
        datasets: dict[str, h5py.Dataset] = {}
        for first in range(0, world.layout.row_count, rows_per_chunk):
            table = world.truth_rows(first, min(first + rows_per_chunk, world.layout.row_count))
            size = table["col"].size
            for name, values in table.items():
                if name not in datasets:
                    datasets[name] = group.create_dataset(
                        name, shape=(0,), maxshape=(None,), dtype=values.dtype, chunks=(65536,)
                    )
                dataset = datasets[name]
                dataset.resize((count + size,))
                dataset[count:] = values
            count += size
        if count:
            whole = {name: datasets[name][...] for name in ("el_light_v", "present", "el_forward_v", "el_reverse_a")}
            group.create_dataset(
                "el_result", data=classify_el(whole, world.profile.el_test), chunks=(min(count, 65536),)
            )
        out.attrs["profile_name"] = world.profile.name
        out.attrs["seed"] = world.seed
        out.attrs["placement_offset_x_um"] = world.placement.offset_x_um
        out.attrs["placement_offset_y_um"] = world.placement.offset_y_um
        out.attrs["placement_rotation_deg"] = world.placement.rotation_deg
        out.attrs["defect_flags"] = ";".join(f"{flag.name}={flag.value}" for flag in DefectFlag if flag.value)
        out.attrs["el_results"] = ";".join(f"{result.name}={result.value}" for result in ElResult)
        out.attrs.update(_prober_conditions(world))  # what export_el_csv declares in its CSV
    temporary.replace(path)
    return count


EL_CSV_COLUMNS = ("COL", "ROW", "VF", "EL", "IR", "RESULT", "BIN")
"""Header of :func:`export_el_csv`: chip column and row (SEMI E142, the recipe's chip box), forward voltage at
the test current (V), EL light at the test current (photodetector volts), current at the reverse test voltage
(A, negative), PASS/FAIL and the prober's bin code (:data:`inspection.el_reference.DEFAULT_FAIL_CODES`)."""

_BIN_OF_RESULT = {ElFailMode[name]: code for code, name in DEFAULT_FAIL_CODES.items()}
_EL_CSV_QUANTITIES = ("col", "row", "el_forward_v", "el_light_v", "el_reverse_a")


def export_el_csv(source: WaferWorld | str | Path, csv_path: str | Path, *, rows_per_chunk: int = 512) -> int:
    """Write the EL reference of every chip on the substrate as a prober's CSV export; return the chip count.

    The file is what ``inspection.el_reference.load_el_csv`` reads with its default mapping: ``# key = value``
    metadata lines (profile, seed, chip pitch and box size, test conditions, units), the header
    :data:`EL_CSV_COLUMNS`, then one line per chip in row-major order. An open or missing chip reads the
    compliance voltage, no light and no reverse current, as a prober sees it.

    Parameters
    ----------
    source
        The virtual wafer, or a ground-truth file of :func:`export_truth` (its ``el_result`` is used as is).
        From a wafer every chip's quantities are held in memory (about 40 bytes a chip) for the wafer median the
        light limits refer to.
    csv_path
        The CSV to write (replaced if it exists; written under a temporary name first).
    rows_per_chunk
        Chip rows evaluated at a time when ``source`` is a wafer.
    """
    csv_path = Path(csv_path)
    if isinstance(source, WaferWorld):
        parts = [
            source.truth_rows(first, min(first + rows_per_chunk, source.layout.row_count))
            for first in range(0, source.layout.row_count, rows_per_chunk)
        ]
        table = {name: np.concatenate([part[name] for part in parts]) for name in (*_EL_CSV_QUANTITIES, "present")}
        table["el_result"] = classify_el(table, source.profile.el_test)
        return _write_el_csv(csv_path, _prober_conditions(source), [table])
    with h5py.File(source, "r") as truth:
        chips = truth["chips"]
        conditions = {key: truth.attrs[key] for key in ("profile_name", "seed", *_PROBER_KEYS) if key in truth.attrs}
        count = chips["col"].shape[0]
        step = 1 << 20  # a million chips at a time: a whole 8" truth file is never in memory at once
        chunks = (
            {name: chips[name][start : start + step] for name in (*_EL_CSV_QUANTITIES, "el_result")}
            for start in range(0, count, step)
        )
        return _write_el_csv(csv_path, conditions, chunks)


_PROBER_KEYS = (
    "pitch_x_um",
    "pitch_y_um",
    "column_count",
    "row_count",
    "el_test_current_a",
    "el_compliance_v",
    "el_reverse_voltage_v",
)


def _prober_conditions(world: WaferWorld) -> dict[str, float | int | str]:
    """The grid and test conditions a prober states in its export (also attributes of the truth file)."""
    grid, el = world.layout.grid, world.profile.el_test
    return {
        "profile_name": world.profile.name,
        "seed": world.seed,
        "pitch_x_um": grid.pitch_x_um,
        "pitch_y_um": grid.pitch_y_um,
        "column_count": world.layout.column_count,
        "row_count": world.layout.row_count,
        "el_test_current_a": el.test_current_a,
        "el_compliance_v": el.compliance_v,
        "el_reverse_voltage_v": el.reverse_voltage_v,
    }


def _write_el_csv(path: Path, conditions: Mapping[str, object], chunks: Iterable[Mapping[str, np.ndarray]]) -> int:
    def text(value: object) -> str:
        value = value.decode() if isinstance(value, bytes) else value
        # every digit: the importer compares the declared pitch with the recipe's
        return repr(float(value)) if isinstance(value, (float, np.floating)) else str(value)

    temporary = path.with_name(path.name + ".partial")
    count = 0
    with temporary.open("w", newline="", encoding="utf-8") as stream:
        stream.write("# plmapper virtual prober: EL results of every chip on the substrate\n")
        stream.write(f"# profile = {text(conditions.get('profile_name', ''))}\n")
        for key in ("seed", *_PROBER_KEYS):
            if key in conditions:
                stream.write(f"# {key} = {text(conditions[key])}\n")
        stream.write("# units: VF V, EL V (photodetector), IR A\n")
        stream.write(f"# generated_utc = {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n")
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(EL_CSV_COLUMNS)
        for chunk in chunks:
            results = [ElFailMode(int(code)) for code in chunk["el_result"]]
            writer.writerows(
                zip(
                    chunk["col"].tolist(),
                    chunk["row"].tolist(),
                    [f"{value:.6f}" for value in chunk["el_forward_v"].tolist()],
                    [f"{value:.6e}" for value in chunk["el_light_v"].tolist()],
                    [f"{value:.4e}" for value in chunk["el_reverse_a"].tolist()],
                    ["PASS" if result is ElFailMode.PASS else "FAIL" for result in results],
                    [_BIN_OF_RESULT[result] for result in results],
                    strict=True,
                )
            )
            count += len(results)
    temporary.replace(path)
    return count


@dataclass(frozen=True)
class _KeptBand:
    """A band of chips (see :func:`cext.pl_render.line_band`) with the render kernel's per-slot chip arrays."""

    key: tuple[int, bytes, bytes]
    col0: int
    band_row0: np.ndarray
    band_start: np.ndarray
    arrays: dict[str, np.ndarray]

    def slots_of(self, cols: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Which of the chips ``(cols, rows)`` this band holds: their positions in ``cols``, and their slots here."""
        column = cols - self.col0
        inside = (column >= 0) & (column < self.band_row0.size)
        column = column[inside]
        offset = rows[inside] - self.band_row0[column]
        held = (offset >= 0) & (offset < self.band_start[column + 1] - self.band_start[column])
        return np.flatnonzero(inside)[held], self.band_start[column[held]] + offset[held]


def _overlap_1d(offset: np.ndarray, half_size: float, sigma: float) -> np.ndarray:
    """Fraction of a 1-D Gaussian (σ) centred ``offset`` from a segment's centre that falls on the segment."""
    scale = 1.0 / (math.sqrt(2.0) * sigma)
    return 0.5 * (erf((half_size - offset) * scale) + erf((half_size + offset) * scale))


def _distance_to_segment(x: np.ndarray, y: np.ndarray, segment: np.ndarray) -> np.ndarray:
    x0, y0, x1, y1 = segment
    dx, dy = x1 - x0, y1 - y0
    length2 = dx * dx + dy * dy
    t = np.clip(((x - x0) * dx + (y - y0) * dy) / length2, 0.0, 1.0) if length2 > 0 else np.zeros_like(x)
    return np.hypot(x - (x0 + t * dx), y - (y0 + t * dy))


def _unit_vectors(rng: np.random.Generator, count: int) -> np.ndarray:
    angle = rng.uniform(0, 2 * np.pi, count)
    return np.column_stack([np.cos(angle), np.sin(angle)])
