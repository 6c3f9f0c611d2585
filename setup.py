"""Build the Cython kernels in cext/ (everything else is declared in pyproject.toml)."""

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension(
        "cext.pl_render",
        ["cext/pl_render.pyx"],
        include_dirs=[np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        # the render is pinned bit for bit to its NumPy reference: no fused multiply-adds whatever -march a build adds
        extra_compile_args=["-O3", "-fopenmp", "-ffp-contract=off"],
        extra_link_args=["-fopenmp"],
    ),
    Extension(
        "cext.chip_kernels",
        ["cext/chip_kernels.pyx"],
        include_dirs=[np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        # no fused multiply-adds where the source has none, whatever -march a build adds: the kernel classifies
        # samples with the reference's own roundings (its AVX2 path is compiled for AVX2 by itself, per function)
        extra_compile_args=["-O3", "-fopenmp", "-ffp-contract=off"],
        extra_link_args=["-fopenmp"],
    ),
    Extension(
        "cext.forest",
        ["cext/forest.pyx"],
        include_dirs=[np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        # the forest's sums must be scikit-learn's bit for bit: no fused or reordered floating-point operations
        extra_compile_args=["-O3", "-fopenmp", "-ffp-contract=off"],
        extra_link_args=["-fopenmp"],
    ),
]

setup(ext_modules=cythonize(extensions, compiler_directives={"language_level": "3"}))
