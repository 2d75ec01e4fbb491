#!/usr/bin/env bash
# Create bench/.venv-peers: the two peer implementations the benchmark compares against.
#
#   bash bench/setup_peers.sh      # idempotent: re-running re-checks the installs and the imports
#
# - diffusers (UnCLIPPipeline) + transformers + accelerate, with their normal dependencies.
# - dalle2-pytorch==1.15.6 with --no-deps: its unpinned torchvision requirement would replace
#   the CPU torch by a CUDA build, and a torchvision matching torch 2.13 cannot load its compiled
#   ops against the CPU build here. We install the pure-Python packages it imports instead
#   (open-clip-torch, x-clip and coca-pytorch also with --no-deps, since they too require
#   torchvision), and bench/peers/tv_stub.py stands in for the torchvision names imported at
#   module load, inside the DALLE2 benchmark process only (see bench/README.md).
# Every install goes through a constraints file pinning torch==2.13.0 (the local CPU wheel).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv-peers"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
CONSTRAINTS="$VENV/constraints.txt"
echo "torch==2.13.0" > "$CONSTRAINTS"
pipi() { "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -c "$CONSTRAINTS" "$@" 2>&1 \
             | grep -v -E "^WARNING: Location|requires torchvision|dalle2-pytorch .* requires" || true; }

pipi torch==2.13.0
# peer 1: diffusers
pipi diffusers transformers accelerate
# peer 2: DALLE2-pytorch without its dependencies, then the ones it imports at module load.
pipi --no-deps dalle2-pytorch==1.15.6
pipi einops rotary-embedding-torch vector-quantize-pytorch ema-pytorch resize-right \
     embedding-reader pydantic click pytorch-warmup fsspec webdataset packaging tqdm pillow \
     numpy kornia torchmetrics ftfy regex
pipi --no-deps "open-clip-torch>=2,<3" x-clip coca-pytorch

# Check: torch is still the CPU build and both peers import.
"$VENV/bin/python" - "$HERE/peers" <<'PYCHECK'
import sys
sys.path.insert(0, sys.argv[1])
import torch
assert torch.__version__ == "2.13.0+cpu", f"torch was replaced: {torch.__version__}"
import tv_stub
tv_stub.install()
import diffusers, dalle2_pytorch
from importlib.metadata import version
print("peers ready: torch", torch.__version__, "| diffusers", diffusers.__version__,
      "| dalle2-pytorch", version("dalle2-pytorch"))
PYCHECK
