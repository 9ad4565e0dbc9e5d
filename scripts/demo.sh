#!/usr/bin/env bash
# The main job, offline: set up (first run only), then the end-to-end DMoERM demo (docs/demo.md).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec dmoerm demo "$@"
