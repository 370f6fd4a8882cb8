#!/usr/bin/env bash
# Builds the blip2 Python package from source (maturin, through pip) into a virtual
# environment and runs its pytest suite. No torch is installed or needed.
#
#   bindings/python/test.sh [pytest arguments]
#
# BLIP2_PY_VENV   the virtual environment (default: target/py-venv, created when missing)
# BLIP2_PY_PROFILE  cargo profile of the native module (default: dev; "release" for a wheel
#                 to ship). dev compiles the workspace crates unoptimised but the
#                 third-party crates at opt-level 3 (root Cargo.toml), and reuses every
#                 artifact CARGO_TARGET_DIR already holds with the same settings.
# CARGO_TARGET_DIR  shared with the workspace build (default: target/ of this repository).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="${BLIP2_PY_VENV:-$root/target/py-venv}"
profile="${BLIP2_PY_PROFILE:-dev}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"

if [ ! -x "$venv/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install "maturin>=1.9,<2" pytest numpy pillow
# maturin is run by pip as a build backend and must be on PATH; no build isolation, so
# that the maturin installed above is used and nothing is downloaded per build.
PATH="$venv/bin:$PATH" MATURIN_PEP517_ARGS="--profile $profile" \
    "${pip[@]}" install --no-build-isolation --no-deps --force-reinstall "$root/bindings/python"
cd "$root"
exec "$venv/bin/python" -m pytest -q bindings/python/tests "$@"
