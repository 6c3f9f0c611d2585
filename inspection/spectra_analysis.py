"""PL spectra of single chips: peak wavelength, FWHM and integrated power, and maps of them over the wafer.

A spectrum is what the OSA (Yokogawa AQ6373) records at a chip: power density in W/nm against wavelength. The
virtual world emits a Gaussian line per chip (``drivers/virtual/world.py: pl_spectrum_w_per_nm``); the OSA sees it
through a Gaussian slit of FWHM ``resolution_nm`` and adds a white noise floor of about 1e-11 W / resolution. A
Gaussian convolved with a Gaussian is a Gaussian whose FWHMs add in quadrature, so the measured line is a
Gaussian too and the chip's own FWHM is ``sqrt(measured² − resolution²)``. Real InGaN lines are slightly
asymmetric; a Gaussian still gives an unbiased centre for them and a FWHM within a few percent.

Fitting (:func:`fit_spectrum`)
------------------------------
1. Clean: drop non-finite points, sort by wavelength.
2. Estimate the noise from second differences (they cancel the smooth line, keep the white noise) and the
   background from the medians of the window's two edges (the lower one: a broad line can still lift one edge).
3. A spike-free (median of 3) copy gives the peak height and the model-free half-maximum crossings; too small a
   peak above the noise is NO_SIGNAL.
4. Least-squares fit of ``A·exp(−(λ−λ₀)²/2σ²) + B`` (:func:`scipy.optimize.least_squares`, soft-L1 loss so spikes
   and other outliers barely pull it) over the line ±3 FWHM, started from the half-maximum estimate. Points at a
   clipped plateau are left out: they are only lower bounds of the line.
5. If the fit fails or disagrees grossly with the half-maximum estimate, report the model-free values instead
   and set FIT_FAILED.

Maps (:func:`interpolate_chip_map`, :func:`chip_map`)
-----------------------------------------------------
Spectra are taken at a few sites; the display map over every chip is interpolated from them: piecewise linear
on the Delaunay triangulation of the sites (exact for a linear field), nearest site outside their convex hull,
evaluated in chunks so millions of chips take bounded memory.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.interpolate import CloughTocher2DInterpolator, LinearNDInterpolator, NearestNDInterpolator
from scipy.ndimage import median_filter
from scipy.optimize import least_squares

from inspection.wafer import WaferLayout

__all__ = [
    "SPECTRUM_RESULT_DTYPE",
    "SpectrumFit",
    "SpectrumQuality",
    "chip_map",
    "deconvolve_fwhm_nm",
    "fit_spectra",
    "fit_spectrum",
    "interpolate_chip_map",
]

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))

MIN_POINTS = 8
"""Fewest usable points that make a spectrum analysable (4 fit parameters, plus some to spare)."""

DEFAULT_MIN_SNR = 8.0
"""A line must rise this many noise σ above the background; a max of a few hundred noise points reaches ~3σ."""

EDGE_FRACTION = 0.1
"""Share of the window at each end used for the first background estimate."""

FIT_HALF_WIDTH_FWHM = 3.0
"""The fit covers the line ± this many FWHM: enough wing for the background, little of anything else."""

UNRESOLVED_RESOLUTIONS = 2.0
"""Below this many resolution bandwidths the deconvolved FWHM rests mostly on the slit model."""

UNRESOLVED_SPACINGS = 3.0
"""Below this many sample spacings a line is too undersampled for its width to mean much."""

CHUNK_POINTS = 1 << 20
"""Target chips interpolated at once: bounds the interpolator's temporary arrays to some tens of MB."""


class SpectrumQuality(enum.IntFlag):
    """How far a :class:`SpectrumFit` can be trusted (bit flags; several can apply, OK is none).

    NO_SIGNAL: no line above the noise (peak_nm and fwhm_nm are NaN). CLIPPED: the line's top is a plateau of
    identical values (a saturated detector), fitted from its flanks. AT_EDGE: the line's half maximum is not
    inside the window on both sides, so its width (and maybe its centre) is an extrapolation. FIT_FAILED: the
    model fit failed; the values are model-free half-maximum estimates. UNRESOLVED: the line is narrower than
    2 resolution bandwidths or 3 sample spacings. BAD_POINTS: non-finite points were dropped.
    """

    OK = 0
    NO_SIGNAL = 1 << 0
    CLIPPED = 1 << 1
    AT_EDGE = 1 << 2
    FIT_FAILED = 1 << 3
    UNRESOLVED = 1 << 4
    BAD_POINTS = 1 << 5


@dataclass(frozen=True)
class SpectrumFit:
    """The line of one spectrum.

    Attributes
    ----------
    peak_nm : float
        Centre wavelength of the line (NaN with NO_SIGNAL).
    fwhm_nm : float
        Full width at half maximum, deconvolved from the resolution when one was given (NaN with NO_SIGNAL).
    integrated_w : float
        Power of the line: the area of the fitted line above the background, including any tail beyond the
        window; with FIT_FAILED or NO_SIGNAL the trapezoid of the spike-filtered data minus background.
    peak_w_per_nm : float
        Height of the line above the background as measured (through the slit, not deconvolved).
    background_w_per_nm : float
        Constant background under the line.
    quality : SpectrumQuality
        Flags; ``SpectrumQuality.OK`` when the fit is clean.
    noise_w_per_nm : float
        Robust RMS noise of the points.
    residual_rms_w_per_nm : float
        Robust RMS (1.4826 × MAD) of data minus model over the fitted points: about ``noise_w_per_nm`` when the
        Gaussian describes the line, larger when it misses the line's shape; spikes do not count (NaN without a
        model fit).
    """

    peak_nm: float
    fwhm_nm: float
    integrated_w: float
    peak_w_per_nm: float
    background_w_per_nm: float
    quality: SpectrumQuality
    noise_w_per_nm: float
    residual_rms_w_per_nm: float


SPECTRUM_RESULT_DTYPE = np.dtype(
    [
        ("col", "<i4"),
        ("row", "<i4"),
        ("peak_nm", "<f4"),
        ("fwhm_nm", "<f4"),
        ("integrated_w", "<f4"),
        ("peak_w_per_nm", "<f4"),
        ("background_w_per_nm", "<f4"),
        ("quality", "<u2"),
    ]
)
"""One row of :func:`fit_spectra`: the chip and its :class:`SpectrumFit` (``quality`` holds the flag bits)."""


# -- one spectrum ------------------------------------------------------------------------------------------------


def _clean_spectrum(
    wavelength_nm: ArrayLike, power_w_per_nm: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64], bool]:
    """Validated 1-D float arrays, finite points only, ascending in wavelength; and whether points were dropped."""
    wavelength = np.asarray(wavelength_nm, dtype=np.float64)
    power = np.asarray(power_w_per_nm, dtype=np.float64)
    if wavelength.ndim != 1:
        raise ValueError(f"wavelength_nm must be 1-D, got shape {wavelength.shape}")
    if power.ndim != 1:
        raise ValueError(f"power_w_per_nm must be 1-D, got shape {power.shape}")
    if wavelength.size != power.size:
        raise ValueError(
            f"power_w_per_nm has {power.size} points but wavelength_nm has {wavelength.size}: they must match"
        )
    finite = np.isfinite(wavelength) & np.isfinite(power)
    order = np.argsort(wavelength[finite], kind="stable")  # OSAs sweep either way; files may be reversed
    return wavelength[finite][order], power[finite][order], not finite.all()


def _noise_sigma(power_w_per_nm: NDArray[np.float64]) -> float:
    """Robust RMS of white noise: the MAD of second differences (σ√6 for white noise), which ignore a smooth
    line and single spikes. Over-estimates for lines only a few points wide, which only makes detection safer."""
    if power_w_per_nm.size < 3:
        return 0.0
    second = np.diff(power_w_per_nm, n=2)
    mad = np.median(np.abs(second - np.median(second)))
    return float(1.4826 * mad / math.sqrt(6.0))


def _edge_background(power_w_per_nm: NDArray[np.float64]) -> float:
    """Background from the window's ends: the lower of the two edge medians (a broad or off-centre line lifts
    one edge more than the other; the median ignores spikes)."""
    edge = max(3, round(EDGE_FRACTION * power_w_per_nm.size))
    return float(min(np.median(power_w_per_nm[:edge]), np.median(power_w_per_nm[-edge:])))


def _half_maximum(
    wavelength_nm: NDArray[np.float64], signal: NDArray[np.float64], peak_index: int
) -> tuple[float | None, float | None]:
    """Wavelengths where ``signal`` (background-subtracted) first falls below half of ``signal[peak_index]`` on
    each side of the peak, linearly interpolated; None where it never does inside the window."""
    half = 0.5 * signal[peak_index]
    left = np.flatnonzero(signal[:peak_index] < half)
    right = np.flatnonzero(signal[peak_index + 1 :] < half)
    left_nm = right_nm = None
    if left.size:
        i = left[-1]  # last point below half before the peak: the crossing is between i and i + 1
        left_nm = float(np.interp(half, signal[i : i + 2], wavelength_nm[i : i + 2]))
    if right.size:
        j = peak_index + 1 + right[0]  # first point below half after the peak: between j − 1 and j
        right_nm = float(np.interp(half, signal[j - 1 : j + 1][::-1], wavelength_nm[j - 1 : j + 1][::-1]))
    return left_nm, right_nm


def deconvolve_fwhm_nm(measured_fwhm_nm: float, resolution_nm: float | None) -> float:
    """Line FWHM without the instrument's Gaussian slit: ``sqrt(measured² − resolution²)`` (0 if narrower).

    Exact for a Gaussian line seen through a Gaussian slit (the AQ6370 series and its twin); for other line
    shapes it is the usual first-order correction.

    Examples
    --------
    >>> round(deconvolve_fwhm_nm(5.0, 3.0), 6)
    4.0
    >>> deconvolve_fwhm_nm(5.0, None)
    5.0
    """
    if resolution_nm is None:
        return float(measured_fwhm_nm)
    return math.sqrt(max(measured_fwhm_nm**2 - resolution_nm**2, 0.0))


def _gaussian_residuals(params: NDArray[np.float64], u: NDArray[np.float64], v: NDArray[np.float64]) -> np.ndarray:
    """Model minus data for (amplitude, centre, sigma, background) at scaled wavelengths ``u``."""
    amplitude, centre, sigma, background = params
    return amplitude * np.exp(-0.5 * ((u - centre) / sigma) ** 2) + background - v


def _gaussian_jacobian(params: NDArray[np.float64], u: NDArray[np.float64], v: NDArray[np.float64]) -> np.ndarray:
    """Analytic derivatives of :func:`_gaussian_residuals` (exact and cheaper than finite differences)."""
    amplitude, centre, sigma, _ = params
    z = (u - centre) / sigma
    shape = np.exp(-0.5 * z * z)
    return np.column_stack([shape, amplitude * shape * z / sigma, amplitude * shape * z * z / sigma, np.ones_like(u)])


def _fit_gaussian(
    wavelength_nm: NDArray[np.float64],
    power_w_per_nm: NDArray[np.float64],
    *,
    centre_nm: float,
    fwhm_nm: float,
    amplitude_w_per_nm: float,
    background_w_per_nm: float,
    noise_w_per_nm: float,
    window_nm: tuple[float, float],
    min_sigma_nm: float,
) -> tuple[float, float, float, float, float] | None:
    """Robust Gaussian + constant fit started from the given estimates: (amplitude, centre, sigma, background,
    robust residual RMS) in W/nm and nm, or None if the optimiser fails.

    The problem is scaled to order one (wavelength in units of the start σ from the start centre, power in units
    of the start amplitude) so that the tolerances and the soft-L1 scale mean the same for every spectrum.
    """
    sigma0 = fwhm_nm / FWHM_PER_SIGMA
    u = (wavelength_nm - centre_nm) / sigma0
    v = power_w_per_nm / amplitude_w_per_nm
    low = np.array([0.0, (window_nm[0] - centre_nm) / sigma0, min_sigma_nm / sigma0, -np.inf])
    high = np.array([1e3, (window_nm[1] - centre_nm) / sigma0, 2.0 * (window_nm[1] - window_nm[0]) / sigma0, np.inf])
    start = np.clip([1.0, 0.0, 1.0, background_w_per_nm / amplitude_w_per_nm], low, high)
    # residuals beyond f_scale are down-weighted: a few noise σ, or 0.1 % of the line when the noise is tiny,
    # so that small shape mismatches do not turn the fit into a pure L1 one
    f_scale = max(3.0 * noise_w_per_nm, 1e-3 * amplitude_w_per_nm) / amplitude_w_per_nm
    result = least_squares(
        _gaussian_residuals,
        start,
        jac=_gaussian_jacobian,
        bounds=(low, high),
        loss="soft_l1",
        f_scale=f_scale,
        args=(u, v),
        x_scale="jac",
    )
    if result.status <= 0 or not np.all(np.isfinite(result.x)):
        return None
    amplitude, centre, sigma, background = result.x
    residuals = _gaussian_residuals(result.x, u, v)
    # robust (MAD) so that it measures noise and shape mismatch, not the spikes the loss already ignored
    residual_rms = float(1.4826 * np.median(np.abs(residuals - np.median(residuals)))) * amplitude_w_per_nm
    return (
        float(amplitude * amplitude_w_per_nm),
        float(centre_nm + centre * sigma0),
        float(sigma * sigma0),
        float(background * amplitude_w_per_nm),
        residual_rms,
    )


def fit_spectrum(
    wavelength_nm: ArrayLike,
    power_w_per_nm: ArrayLike,
    *,
    resolution_nm: float | None = None,
    min_snr: float = DEFAULT_MIN_SNR,
) -> SpectrumFit:
    """Peak wavelength, FWHM and power of the PL line in one spectrum (robust Gaussian fit; see module notes).

    Parameters
    ----------
    wavelength_nm : array_like, 1-D
        Wavelengths, in any order (sorted here); non-finite points are dropped with their power.
    power_w_per_nm : array_like, 1-D
        Power density at each wavelength; noise may make it negative. Non-finite points are dropped.
    resolution_nm : float, optional
        The OSA's resolution bandwidth (FWHM of its Gaussian slit). When given, ``fwhm_nm`` is deconvolved in
        quadrature (exact for Gaussian line and slit) and lines narrower than twice it are flagged UNRESOLVED.
    min_snr : float
        Least line height above the background, in noise σ, for a spectrum to have a signal.

    Returns
    -------
    SpectrumFit
        Analysable but hopeless spectra (too few finite points, no line) are not errors: they come back with
        NO_SIGNAL (and BAD_POINTS if points were dropped) and NaN peak and width.

    Raises
    ------
    ValueError
        If an array is not 1-D, the two lengths differ, or ``resolution_nm`` / ``min_snr`` is not positive.

    Examples
    --------
    >>> wavelength = np.linspace(420.0, 500.0, 161)
    >>> power = 2e-6 * np.exp(-0.5 * ((wavelength - 455.0) / (20.0 / FWHM_PER_SIGMA)) ** 2) + 1e-8
    >>> fit = fit_spectrum(wavelength, power)
    >>> round(fit.peak_nm, 3), round(fit.fwhm_nm, 3), fit.quality
    (455.0, 20.0, <SpectrumQuality.OK: 0>)
    """
    if resolution_nm is not None and not (math.isfinite(resolution_nm) and resolution_nm > 0):
        raise ValueError(f"resolution_nm must be a finite number > 0 or None, got {resolution_nm!r}")
    if not (math.isfinite(min_snr) and min_snr > 0):
        raise ValueError(f"min_snr must be a finite number > 0, got {min_snr!r}")
    wavelength, power, dropped = _clean_spectrum(wavelength_nm, power_w_per_nm)
    quality = SpectrumQuality.BAD_POINTS if dropped else SpectrumQuality.OK
    nan = math.nan
    if wavelength.size < MIN_POINTS or wavelength[-1] <= wavelength[0]:
        return SpectrumFit(nan, nan, nan, nan, nan, quality | SpectrumQuality.NO_SIGNAL, nan, nan)

    noise = _noise_sigma(power)
    background = _edge_background(power)
    smooth = median_filter(power, size=3, mode="nearest") - background  # single-point spikes gone
    peak_index = int(np.argmax(smooth))
    amplitude = float(smooth[peak_index])
    if not amplitude > min_snr * noise or amplitude <= 0:
        return SpectrumFit(
            nan,
            nan,
            float(np.trapezoid(smooth, wavelength)),
            amplitude,
            background,
            quality | SpectrumQuality.NO_SIGNAL,
            noise,
            nan,
        )

    window = (float(wavelength[0]), float(wavelength[-1]))
    spacing = (window[1] - window[0]) / (wavelength.size - 1)  # the mean: repeated wavelengths make a median 0
    # a saturated detector repeats its full-scale value; exact repeats of the maximum cannot come from a smooth
    # line plus noise (a noiseless symmetric line gives at most two)
    top = power == power.max()
    if np.count_nonzero(top) >= 3:
        quality |= SpectrumQuality.CLIPPED
    else:
        top[:] = False

    left_nm, right_nm = _half_maximum(wavelength, smooth, peak_index)
    peak0 = float(wavelength[peak_index])
    if left_nm is not None and right_nm is not None:
        centre0, fwhm0 = 0.5 * (left_nm + right_nm), right_nm - left_nm
    elif left_nm is not None:
        centre0, fwhm0 = peak0, 2.0 * (peak0 - left_nm)
    elif right_nm is not None:
        centre0, fwhm0 = peak0, 2.0 * (right_nm - peak0)
    else:
        centre0, fwhm0 = peak0, window[1] - window[0]
    fwhm0 = max(fwhm0, 2.0 * spacing)

    fit = None
    use = (np.abs(wavelength - centre0) <= FIT_HALF_WIDTH_FWHM * fwhm0) & ~top
    if np.count_nonzero(use) >= MIN_POINTS:
        fit = _fit_gaussian(
            wavelength[use],
            power[use],
            centre_nm=centre0,
            fwhm_nm=fwhm0,
            amplitude_w_per_nm=amplitude,
            background_w_per_nm=background,
            noise_w_per_nm=noise,
            window_nm=window,
            min_sigma_nm=0.25 * spacing,
        )
    # A fit far from the half-maximum estimate found something else (a spike, a shoulder); a clipped line's
    # half maximum is too narrow, so the check only applies to unclipped lines.
    if fit is not None and SpectrumQuality.CLIPPED not in quality:
        fwhm_fit = FWHM_PER_SIGMA * fit[2]
        if not (0.5 < fwhm_fit / fwhm0 < 2.0 and abs(fit[1] - centre0) < fwhm0):
            fit = None

    if fit is not None:
        height, centre, sigma, background, residual = fit
        fwhm_measured = FWHM_PER_SIGMA * sigma
        integrated = height * sigma * math.sqrt(2.0 * math.pi)
    else:
        quality |= SpectrumQuality.FIT_FAILED
        height, centre, fwhm_measured, residual = amplitude, centre0, fwhm0, nan
        integrated = float(np.trapezoid(smooth, wavelength))
    if centre - 0.5 * fwhm_measured < window[0] or centre + 0.5 * fwhm_measured > window[1]:
        quality |= SpectrumQuality.AT_EDGE
    if fwhm_measured < UNRESOLVED_SPACINGS * spacing or (
        resolution_nm is not None and fwhm_measured < UNRESOLVED_RESOLUTIONS * resolution_nm
    ):
        quality |= SpectrumQuality.UNRESOLVED
    return SpectrumFit(
        peak_nm=centre,
        fwhm_nm=deconvolve_fwhm_nm(fwhm_measured, resolution_nm),
        integrated_w=integrated,
        peak_w_per_nm=height,
        background_w_per_nm=background,
        quality=quality,
        noise_w_per_nm=noise,
        residual_rms_w_per_nm=residual,
    )


def fit_spectra(
    spectra: Sequence[Mapping[str, object]],
    *,
    resolution_nm: float | None = None,
    min_snr: float = DEFAULT_MIN_SNR,
) -> NDArray[np.void]:
    """:func:`fit_spectrum` of every spectrum of a scan file, one row each, in order.

    Parameters
    ----------
    spectra : sequence of mapping
        Like :meth:`inspection.scanfile.ScanFile.spectra`: each with ``col``, ``row``, ``wavelength_nm`` and
        ``power_w_per_nm`` (other keys are ignored). A chip measured several times gets several rows.
    resolution_nm, min_snr
        As for :func:`fit_spectrum` (the recipe's ``spectra.resolution_nm`` for deconvolved widths).

    Returns
    -------
    ndarray of SPECTRUM_RESULT_DTYPE
        Filter on ``quality == 0`` (or on the bits that matter) before mapping values.

    Raises
    ------
    ValueError
        If a spectrum lacks a key or its arrays are malformed; the message names the spectrum's index and chip.
    """
    result = np.zeros(len(spectra), dtype=SPECTRUM_RESULT_DTYPE)
    for index, spectrum in enumerate(spectra):
        missing = [key for key in ("col", "row", "wavelength_nm", "power_w_per_nm") if key not in spectrum]
        if missing:
            raise ValueError(f"spectra[{index}] has no {', '.join(missing)}")
        try:
            fit = fit_spectrum(
                spectrum["wavelength_nm"], spectrum["power_w_per_nm"], resolution_nm=resolution_nm, min_snr=min_snr
            )
        except ValueError as error:
            raise ValueError(f"spectra[{index}] (chip {spectrum['col']}, {spectrum['row']}): {error}") from None
        result[index] = (
            spectrum["col"],
            spectrum["row"],
            fit.peak_nm,
            fit.fwhm_nm,
            fit.integrated_w,
            fit.peak_w_per_nm,
            fit.background_w_per_nm,
            int(fit.quality),
        )
    return result


# -- maps --------------------------------------------------------------------------------------------------------

InterpolationMethod = Literal["linear", "cubic", "nearest"]


def _site_interpolator(
    cols: ArrayLike,
    rows: ArrayLike,
    values: ArrayLike,
    method: InterpolationMethod,
    pitch_um: tuple[float, float],
) -> Callable[[NDArray[np.float64]], NDArray[np.float64]] | None:
    """A function of (n, 2) points in µm (col·pitch_x, row·pitch_y) → values, or None without finite sites."""
    if method not in ("linear", "cubic", "nearest"):
        raise ValueError(f"method must be 'linear', 'cubic' or 'nearest', got {method!r}")
    if np.shape(cols) != np.shape(values) or np.shape(rows) != np.shape(values):
        raise ValueError(
            f"cols {np.shape(cols)}, rows {np.shape(rows)} and values {np.shape(values)} must have the same shape"
        )
    col = np.asarray(cols, dtype=np.float64).ravel()
    row = np.asarray(rows, dtype=np.float64).ravel()
    value = np.asarray(values, dtype=np.float64).ravel()
    keep = np.isfinite(col) & np.isfinite(row) & np.isfinite(value)
    if not keep.any():
        return None
    # a chip measured several times is one site with the mean value: Qhull cannot triangulate duplicate points
    sites, inverse = np.unique(np.column_stack([col[keep], row[keep]]), axis=0, return_inverse=True)
    inverse = inverse.ravel()
    mean = np.bincount(inverse, weights=value[keep]) / np.bincount(inverse)
    points = sites * np.asarray(pitch_um, dtype=np.float64)  # distances in µm, so non-square pitches are honest
    nearest = NearestNDInterpolator(points, mean)
    # triangulation needs three sites not on one line; otherwise nearest is the only sensible answer
    if method == "nearest" or len(points) < 3 or np.linalg.matrix_rank(points - points.mean(axis=0)) < 2:
        return nearest
    inside = LinearNDInterpolator(points, mean) if method == "linear" else CloughTocher2DInterpolator(points, mean)

    def evaluate(targets: NDArray[np.float64]) -> NDArray[np.float64]:
        result = inside(targets)
        outside = np.isnan(result)
        if outside.any():
            result[outside] = nearest(targets[outside])
        return result

    return evaluate


def _check_pitch(pitch_um: tuple[float, float]) -> tuple[float, float]:
    pitch = (float(pitch_um[0]), float(pitch_um[1]))
    if not all(math.isfinite(p) and p > 0 for p in pitch):
        raise ValueError(f"pitch_um must be two finite numbers > 0, got {pitch_um!r}")
    return pitch


def interpolate_chip_map(
    cols: ArrayLike,
    rows: ArrayLike,
    values: ArrayLike,
    target_cols: ArrayLike,
    target_rows: ArrayLike,
    *,
    method: InterpolationMethod = "linear",
    pitch_um: tuple[float, float] = (1.0, 1.0),
) -> NDArray[np.float64]:
    """Values measured at some chips (sites) interpolated to other chips.

    Inside the convex hull of the sites: ``"linear"`` is piecewise linear on their Delaunay triangulation
    (:class:`scipy.interpolate.LinearNDInterpolator`; reproduces a linear field exactly), ``"cubic"`` the C1
    Clough–Tocher surface on it. Outside the hull, and for ``"nearest"``, the value of the nearest site
    (:class:`scipy.interpolate.NearestNDInterpolator`). Sites with a NaN value are ignored; a chip measured several
    times counts once, with the mean value. Fewer than three sites, or sites all on one line, give nearest values.
    Targets are evaluated in chunks of :data:`CHUNK_POINTS`, so the temporary memory does not grow with their
    number (10⁶ targets take about a second).

    Parameters
    ----------
    cols, rows, values : array_like
        Site chip indices and their values (same shape).
    target_cols, target_rows : array_like
        Chips to evaluate (broadcast together; fractional indices are fine).
    method : {"linear", "cubic", "nearest"}
        Interpolation inside the sites' convex hull.
    pitch_um : (float, float)
        Chip pitch along col and row: distances are measured in µm, which matters when the pitches differ.

    Returns
    -------
    ndarray of float64
        Shape of the broadcast targets; NaN everywhere if no site has a finite value.

    Raises
    ------
    ValueError
        If the site arrays differ in shape, ``method`` is unknown or ``pitch_um`` is not positive.

    Examples
    --------
    >>> interpolate_chip_map([0, 10, 0], [0, 0, 10], [1.0, 2.0, 3.0], [5, 20], [5, 0])
    array([2.5, 2. ])
    """
    pitch = _check_pitch(pitch_um)
    target_col, target_row = np.broadcast_arrays(
        np.asarray(target_cols, dtype=np.float64), np.asarray(target_rows, dtype=np.float64)
    )
    result = np.full(target_col.shape, np.nan)
    interpolator = _site_interpolator(cols, rows, values, method, pitch)
    if interpolator is None:
        return result
    flat_col, flat_row, flat_result = target_col.ravel(), target_row.ravel(), result.reshape(-1)
    for start in range(0, flat_col.size, CHUNK_POINTS):
        stop = start + CHUNK_POINTS
        targets = np.column_stack([flat_col[start:stop] * pitch[0], flat_row[start:stop] * pitch[1]])
        flat_result[start:stop] = interpolator(targets)
    return result


def chip_map(
    layout: WaferLayout,
    cols: ArrayLike,
    rows: ArrayLike,
    values: ArrayLike,
    *,
    downsample: int = 1,
    method: InterpolationMethod = "linear",
    usable_only: bool = False,
) -> NDArray[np.float32]:
    """A display image of site values interpolated over the layout's chip box (see :func:`interpolate_chip_map`).

    Parameters
    ----------
    layout : WaferLayout
        The chip grid; the image is indexed ``[row, col]``, row 0 at the bottom, like every chip map.
    cols, rows, values : array_like
        Site chip indices and their values (NaN values ignored).
    downsample : int
        Each pixel is a ``downsample × downsample`` block of chips, valued at the block's centre (the
        interpolated field is smooth on that scale); 4–8 keeps an 8" wafer's tens of millions of chips to a
        few million pixels.
    method : {"linear", "cubic", "nearest"}
        As for :func:`interpolate_chip_map`.
    usable_only : bool
        Blank chips inside the edge exclusion too (default: only chips off the physical wafer are blank).

    Returns
    -------
    ndarray of float32, shape (ceil(row_count / downsample), ceil(column_count / downsample))
        NaN for blocks without a chip on the wafer (or without a usable chip) and everywhere if no site value is
        finite. Besides the image, the layout's chip mask (one byte per chip: 100 MB for 8" at 20 µm) is the
        largest temporary; the interpolation works through the image in chunks of :data:`CHUNK_POINTS` pixels.

    Raises
    ------
    ValueError
        If ``downsample`` is not a positive integer, or as for :func:`interpolate_chip_map`.
    """
    if isinstance(downsample, bool) or not isinstance(downsample, int | np.integer) or downsample < 1:
        raise ValueError(f"downsample must be an integer >= 1, got {downsample!r}")
    mask = layout.usable_mask() if usable_only else layout.physical_mask()
    if downsample > 1:
        row_starts = np.arange(0, layout.row_count, downsample)
        col_starts = np.arange(0, layout.column_count, downsample)
        # a block is shown if any of its chips is: the wafer outline keeps its size at every scale
        mask = np.logical_or.reduceat(np.logical_or.reduceat(mask, row_starts, axis=0), col_starts, axis=1)
    image = np.full(mask.shape, np.nan, dtype=np.float32)
    pitch = (layout.grid.pitch_x_um, layout.grid.pitch_y_um)
    interpolator = _site_interpolator(cols, rows, values, method, pitch)
    if interpolator is None:
        return image
    # block centres in chip indices (the chip centre itself when downsample is 1)
    centre_offset = 0.5 * (downsample - 1)
    col_centres = np.arange(mask.shape[1]) * downsample + centre_offset
    rows_per_chunk = max(1, CHUNK_POINTS // max(mask.shape[1], 1))
    for first in range(0, mask.shape[0], rows_per_chunk):
        block_rows, block_cols = np.nonzero(mask[first : first + rows_per_chunk])
        targets = np.column_stack(
            [
                col_centres[block_cols] * pitch[0],
                ((block_rows + first) * downsample + centre_offset) * pitch[1],
            ]
        )
        image[block_rows + first, block_cols] = interpolator(targets)
    return image
