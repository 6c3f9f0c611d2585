"""The Cython kernels equal their NumPy references (cext/reference.py)."""

from __future__ import annotations

import numpy as np
import pytest

from cext import pl_render, reference


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(42)


def test_carrier_density_matches_reference(rng: np.random.Generator) -> None:
    count = 5000
    generation = np.concatenate([[0.0, 1e-9, 1e4], 10.0 ** rng.uniform(-6, 3, count - 3)])
    a_coeff = 10.0 ** rng.uniform(-3, 1, count)
    c_coeff = 10.0 ** rng.uniform(-4, -1, count)
    shunt = np.where(rng.random(count) < 0.5, 0.0, 10.0 ** rng.uniform(-1, 1, count))
    saturation = 10.0 ** rng.uniform(-2, 0, count)
    fast = pl_render.carrier_density(generation, a_coeff, c_coeff, shunt, saturation)
    slow = reference.carrier_density(generation, a_coeff, c_coeff, shunt, saturation)
    np.testing.assert_allclose(fast, slow, rtol=1e-9, atol=1e-300)
    residual = a_coeff * fast + fast**2 + c_coeff * fast**3 + shunt * fast / (1 + fast / saturation) - generation
    np.testing.assert_allclose(residual, 0.0, atol=1e-9 * generation.max())


def test_carrier_density_known_answer() -> None:
    # A = 1, C = S = 0: n² + n = 2 has the root n = 1
    ones = np.ones(1)
    assert pl_render.carrier_density(2 * ones, ones, 0 * ones, 0 * ones, ones)[0] == pytest.approx(1.0, rel=1e-12)


def test_empty_input_gives_empty_output() -> None:
    empty = np.zeros(0)
    assert pl_render.carrier_density(empty, empty, empty, empty, empty).shape == (0,)


def random_band(rng: np.random.Generator, samples: int, reach: int) -> dict:
    columns, height = 60, 2 * reach + 4
    slots = columns * height
    col_f = np.sort(rng.uniform(reach, columns - reach - 1, samples))
    row_f = 2.0 + reach + rng.uniform(-0.5, 0.5, samples)
    present = rng.random(slots) < 0.9
    return {
        "col_f": col_f,
        "row_f": row_f,
        "power_w": rng.uniform(1e-4, 2e-2, samples),
        "col0": 0,
        "band_row0": np.zeros(columns, dtype=np.int64),
        "band_height": height,
        "a_coeff": 10.0 ** rng.uniform(-2, 0, slots),
        "c_coeff": np.full(slots, 0.02),
        "shunt": np.where(rng.random(slots) < 0.2, 2.0, 0.0),
        "shunt_saturation": np.full(slots, 0.3),
        "excitation": np.where(present, rng.uniform(0.1, 1.0, slots), 0.0),
        "pl_gain_v_per_w": np.where(present, rng.uniform(50, 300, slots), 0.0),
        "scatter_v_per_w": np.where(present, 0.05, 0.0),
        "half_width": 0.3,
        "half_height": 0.3,
        "sigma_col": 0.08,
        "sigma_row": 0.08,
        "generation_per_w": 2.8e3,
        "reach": reach,
    }


@pytest.mark.parametrize("reach", [1, 2])
def test_render_line_matches_reference(rng: np.random.Generator, reach: int) -> None:
    arguments = random_band(rng, 4000, reach)
    fast = pl_render.render_line(**arguments)
    slow = reference.render_line(**arguments)
    np.testing.assert_allclose(fast, slow, rtol=1e-8, atol=1e-15)
    assert fast.max() > 0.1  # the samples did hit chips


def test_render_line_no_chips_is_zero(rng: np.random.Generator) -> None:
    arguments = random_band(rng, 100, 1)
    arguments["excitation"][:] = 0.0
    arguments["scatter_v_per_w"][:] = 0.0
    assert not pl_render.render_line(**arguments).any()
