#!/usr/bin/env bash
# Static checks, run by .ci/run before the tests (all must pass):
#   ruff over the code, import-linter's layer contracts (pyproject.toml [tool.importlinter]), and
#   mypy over the typed layers core, models, capture and causal (pyproject.toml [tool.mypy]).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${HEADMINE_VENV:-.venv}"
echo "== ruff"
"$VENV/bin/ruff" check src tests bench scripts
echo "== import contracts"
"$VENV/bin/lint-imports"
echo "== mypy (core, models, capture, causal)"
"$VENV/bin/mypy"
