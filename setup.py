"""Build the Cython kernels in cext/ (everything else is declared in pyproject.toml)."""

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup


def kernel(name: str) -> Extension:
    """cext/<name>.pyx as cext.<name>, with OpenMP. Every kernel is pinned bit for bit to a reference: the render to
    its NumPy reference, the chip kernel to the reference's roundings when it classifies samples (its AVX2 path is
    compiled for AVX2 by itself, per function), the forest to scikit-learn's sums. So no fused multiply-adds where
    the source has none, whatever -march a build adds."""
    return Extension(
        f"cext.{name}",
        [f"cext/{name}.pyx"],
        include_dirs=[np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=["-O3", "-fopenmp", "-ffp-contract=off"],
        extra_link_args=["-fopenmp"],
    )


extensions = [kernel("pl_render"), kernel("chip_kernels"), kernel("forest")]

setup(ext_modules=cythonize(extensions, compiler_directives={"language_level": "3"}))
