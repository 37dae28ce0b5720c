#!/usr/bin/env bash
# Install PyTorch into the given venv before the project, so pip never chooses a build freely.
# GPU machine (nvidia-smi lists a device): the default build of TORCH_VERSION.
# No GPU, TORCH_CPU_INDEX set: the same version from that index.
# No GPU on Linux: the "+cpu" build of that version, from the configured indexes if they have it
# (a local wheel), else from PyTorch's CPU index (PyPI's Linux wheel is the multi-GB CUDA build,
# and it has no "+cpu" version to pick by mistake).
# No GPU elsewhere (macOS): PyPI's build, which is CPU-only there.
set -euo pipefail
venv=${1:?usage: install_torch.sh VENV_DIR}
version=${TORCH_VERSION:-2.13.0}
pip=("$venv/bin/pip" install -q)
if "$venv/bin/python" -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$version' else 1)" 2>/dev/null; then
  exit 0
fi
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  "${pip[@]}" "torch==$version"
elif [ -n "${TORCH_CPU_INDEX:-}" ]; then
  "${pip[@]}" "torch==$version" --index-url "$TORCH_CPU_INDEX" --extra-index-url https://pypi.org/simple
elif [ "$(uname -s)" = Linux ]; then
  if ! "${pip[@]}" "torch==$version+cpu" 2>/dev/null; then
    echo "torch==$version+cpu is not on the configured indexes; trying PyTorch's CPU index"
    "${pip[@]}" "torch==$version+cpu" --extra-index-url https://download.pytorch.org/whl/cpu
  fi
else
  "${pip[@]}" "torch==$version"
fi
"$venv/bin/python" -c "import torch; print('torch', torch.__version__, 'cuda' if torch.cuda.is_available() else 'cpu')"
