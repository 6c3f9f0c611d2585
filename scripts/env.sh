# Sourced by scripts/demo and scripts/test: make .venv (once), install plmapper into it (editable, which also
# compiles the Cython kernels in cext/), and put it first on PATH. Needs only python3 (>= 3.11) and a C compiler.
venv="${PLMAPPER_VENV:-.venv}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
fi
# reinstall only when the project definition or the kernels changed since the last install
stamp="$venv/.plmapper-installed${PLMAPPER_EXTRAS:-}"
if [ ! -f "$stamp" ] || [ -n "$(find pyproject.toml setup.py cext -newer "$stamp" -print -quit)" ]; then
    "$venv/bin/python" -m pip install --quiet -e ".${PLMAPPER_EXTRAS:-}"
    touch "$stamp"
fi
export PATH="$PWD/$venv/bin:$PATH"
