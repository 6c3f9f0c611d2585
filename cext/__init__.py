"""Cython kernels (OpenMP): the virtual station's PL renderer and the pipeline's per-chip accumulation.

OpenMP threads that run out of work spin by default, burning a core that the scan engine, the file writer or the
other kernel thread needs; on this 2-core machine that cost 3x the CPU time and 4x the wall time of a kernel. The
runtime reads its settings when the first kernel module loads, so they are set here, before any of them.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "passive")
