#!/usr/bin/env bash
# Run the whole test suite (slow tests on real checkpoints included) in the project's virtual environment.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${HEADMINE_VENV:-.venv}"
exec "$VENV/bin/python" -m pytest -q "$@"
