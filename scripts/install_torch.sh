#!/usr/bin/env bash
# Install PyTorch into the given venv before the project, so pip never chooses a build freely.
# GPU machine (nvidia-smi lists a device): the default build of TORCH_VERSION.
# No GPU: the same version from TORCH_CPU_INDEX when set (e.g. https://download.pytorch.org/whl/cpu),
# otherwise from the configured indexes (on machines that carry a local CPU wheel, that one).
set -euo pipefail
venv=${1:?usage: install_torch.sh VENV_DIR}
version=${TORCH_VERSION:-2.13.0}
if "$venv/bin/python" -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$version' else 1)" 2>/dev/null; then
  exit 0
fi
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  "$venv/bin/pip" install -q "torch==$version"
elif [ -n "${TORCH_CPU_INDEX:-}" ]; then
  "$venv/bin/pip" install -q "torch==$version" --index-url "$TORCH_CPU_INDEX" --extra-index-url https://pypi.org/simple
else
  "$venv/bin/pip" install -q "torch==$version"
fi
"$venv/bin/python" -c "import torch; print('torch', torch.__version__, 'cuda' if torch.cuda.is_available() else 'cpu')"
