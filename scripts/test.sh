#!/usr/bin/env bash
# Run the test suite in its own virtual environment (set up on first use).
#
#   bash scripts/test.sh                       # everything, on trl 1.12 (PPO included)
#   bash scripts/test.sh --trl 1.16 -m "not slow"   # newest TRL; PPO tests skip with the reason
#   bash scripts/test.sh tests/test_modeling.py -x  # any pytest arguments
set -euo pipefail
cd "$(dirname "$0")/.."
trl_line="1.12"
if [ "${1:-}" = "--trl" ]; then trl_line="$2"; shift 2; fi
bash scripts/setup.sh --trl "$trl_line"
venv=".venv"; [ "$trl_line" = "1.16" ] && venv=".venv-trl116"
# shellcheck disable=SC1091
. "$venv/bin/activate"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec python -m pytest "$@"
