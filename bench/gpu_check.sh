#!/usr/bin/env bash
# The cuda path end to end, in one short run on a machine with an NVIDIA GPU (a few minutes):
# builds a venv, runs the GPU tests, then times a scan and an SAE encode on cuda against cpu.
#
#     bash bench/gpu_check.sh            # from the repository root; prints every figure
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${NACT_GPU_VENV:-/tmp/nact-gpu-venv}
if [ ! -x "$venv/bin/nact" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet torch   # the CUDA build pip picks for this machine
  "$venv/bin/pip" install --quiet '.[test]'
fi
. "$venv/bin/activate"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
NACT_TEST_INSTALLED=1 python -m pytest -q tests/test_cuda.py tests/test_metric.py -k "cuda or gpu" -p no:cacheprovider
python bench/scan_bench.py --sizes 4 --dtypes f32 bf16 --runs 3 --device cpu --device cuda --no-naive
python bench/sae_bench.py --d-in 2304 --d-sae 16384 --tokens 65536 --device cuda --runs 3
python bench/sae_bench.py --d-in 2304 --d-sae 16384 --tokens 16384 --device cpu --runs 1
