"""The rule layer: defect classes from robust, relative thresholds, with no training data.

Every threshold is a fraction of the chip's *expected* value (the wafer trend at its place, or the median of its
8 neighbours, see :mod:`inspection.features`), so the same recipe works on a brighter wafer or one with a process
gradient. Set them in the recipe's ``[classification]`` section (:class:`RuleSettings`). Per chip, first match wins:

================== ==========================================================================================
class              rule (``I`` = intensity over trend, ``N`` = over neighbours, at the highest power)
================== ==========================================================================================
missing            ``I < missing_fraction`` (not even the laser light the chip's surface scatters into the
                   detector: there is no chip)
dead               ``I < dead_fraction``
dim                ``min(I, N) < dim_fraction``
leakage            efficiency ratio (low/high power) over its trend ``< leakage_ratio_fraction``: a shunt eats
                   the carriers at low excitation and hardly matters at high
bright             ``I > bright_fraction``
wavelength_shift   measured spectrum's peak further than ``wavelength_shift_nm`` from the wafer's smooth
                   wavelength trend (a quadratic surface fitted robustly to all spectra)
broadened          measured FWHM above ``broadened_fraction`` × the wafer's median FWHM
================== ==========================================================================================

The defaults were set on virtual-station wafers (see the README's classification figures): the dimmest chips
that still pass the EL test emit 0.70 × the trend at 20 mW, leaky chips' ratio is at most 0.54 × the trend and
good chips' at least 0.81 (dim chips, whose ratio also drops, are caught as dim first). ``missing_fraction``
depends on how much excitation light the station's filter lets through from a chip's surface; check it on a wafer
with known missing chips when the optics change.
"""

from __future__ import annotations

import numpy as np

from inspection.bins import DefectClass
from inspection.features import FEATURE_NAMES
from inspection.recipe import ClassificationSettings as RuleSettings
from inspection.spectra_analysis import SpectrumQuality

__all__ = ["RuleSettings", "classify_features", "spectral_outliers"]

_COLUMN = {name: index for index, name in enumerate(FEATURE_NAMES)}


def classify_features(features: np.ndarray, inspected: np.ndarray, settings: RuleSettings) -> np.ndarray:
    """Defect class per chip from its features (:func:`inspection.features.band_features`).

    Parameters
    ----------
    features
        (..., len(FEATURE_NAMES)) float array.
    inspected
        Bool array of the leading shape: chips measured inside the usable area. Others are NOT_INSPECTED.

    Returns
    -------
    uint8 array of :class:`DefectClass` values, the leading shape of ``features``.

    Examples
    --------
    >>> good = np.zeros(len(FEATURE_NAMES)); good[[3, 4, 5, 6]] = 1.0
    >>> leaky = good.copy(); leaky[_COLUMN["log_rel_ratio"]] = np.log10(0.3)
    >>> classify_features(np.stack([good, leaky]), np.array([True, True]), RuleSettings()).tolist()
    [0, 6]
    """
    intensity = 10.0 ** features[..., _COLUMN["log_rel_intensity_high"]].astype(np.float64)
    neighbours = features[..., _COLUMN["neighbour_ratio_high"]].astype(np.float64)
    ratio = 10.0 ** features[..., _COLUMN["log_rel_ratio"]].astype(np.float64)
    result = np.full(intensity.shape, DefectClass.GOOD, dtype=np.uint8)
    decided = ~inspected.copy()
    result[decided] = DefectClass.NOT_INSPECTED
    with np.errstate(invalid="ignore"):
        rules = [
            (intensity < settings.missing_fraction, DefectClass.MISSING),
            (intensity < settings.dead_fraction, DefectClass.DEAD),
            (np.fmin(intensity, neighbours) < settings.dim_fraction, DefectClass.DIM),
            (ratio < settings.leakage_ratio_fraction, DefectClass.LEAKAGE),
            (intensity > settings.bright_fraction, DefectClass.BRIGHT),
        ]
    for matches, defect_class in rules:
        new = matches & ~decided
        result[new] = defect_class
        decided |= new
    return result


def spectral_outliers(
    spectra: np.ndarray, x_um: np.ndarray, y_um: np.ndarray, settings: RuleSettings
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which measured spectra are wavelength-shifted or broadened.

    Parameters
    ----------
    spectra
        ``SPECTRUM_RESULT_DTYPE`` records (:mod:`inspection.spectra_analysis`).
    x_um, y_um
        Wafer-frame centre of each spectrum's chip.

    Returns
    -------
    shifted, broadened
        Bool per spectrum (False for spectra whose fit is not usable).
    trend_nm
        The wafer's smooth wavelength trend at each chip (NaN where it could not be fitted).
    """
    usable = (
        (spectra["quality"] & np.uint16(SpectrumQuality.NO_SIGNAL | SpectrumQuality.FIT_FAILED)) == 0
    ) & np.isfinite(spectra["peak_nm"])
    shifted = np.zeros(spectra.size, dtype=bool)
    broadened = np.zeros(spectra.size, dtype=bool)
    trend = np.full(spectra.size, np.nan)
    if usable.sum() < 6:
        return shifted, broadened, trend
    # quadratic surface in x, y (the indium/temperature gradient), fitted with iterative clipping so shifted
    # clusters do not bend it
    scale = max(float(np.max(np.hypot(x_um, y_um))), 1.0)
    u, v = x_um / scale, y_um / scale
    design = np.column_stack([np.ones_like(u), u, v, u * u, u * v, v * v])
    peak = spectra["peak_nm"].astype(np.float64)
    keep = usable.copy()
    for _ in range(5):
        coefficients, *_ = np.linalg.lstsq(design[keep], peak[keep], rcond=None)
        residual = peak - design @ coefficients
        spread = 1.4826 * np.median(np.abs(residual[keep] - np.median(residual[keep])))
        new_keep = usable & (np.abs(residual) <= max(3.0 * spread, 0.5 * settings.wavelength_shift_nm))
        if np.array_equal(new_keep, keep) or new_keep.sum() < 6:
            break
        keep = new_keep
    trend = design @ coefficients
    shifted = usable & (np.abs(peak - trend) > settings.wavelength_shift_nm)
    fwhm = spectra["fwhm_nm"].astype(np.float64)
    median_fwhm = float(np.median(fwhm[usable]))
    broadened = usable & (fwhm > settings.broadened_fraction * median_fwhm)
    return shifted, broadened, trend
