#!/usr/bin/env bash
# Lint and format check (ruff, pinned in the dev extra; rules and line length in pyproject.toml).
#
#   bash scripts/lint.sh          # check, as CI does
#   bash scripts/lint.sh --fix    # apply ruff's safe fixes and format
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
if [ "${1:-}" = "--fix" ]; then
  ruff check --fix .
  ruff format .
else
  ruff check .
  ruff format --check .
fi
