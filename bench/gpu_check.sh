#!/usr/bin/env bash
# The cuda path end to end, in one short run on a machine with an NVIDIA GPU (a few minutes):
# runs the GPU tests, then times a scan, an SAE encode and the training metric's update on cuda
# against cpu (the metric against the reference metric's update on the same GPU).
#
#     bash bench/gpu_check.sh            # from the repository root; prints every figure
#
# Offline: nact is installed (no dependencies, no build isolation, no index) into a folder on
# the PYTHONPATH of $NACT_GPU_PYTHON (default python3), which must hold a CUDA build of torch,
# numpy, typer, rich, safetensors, pytest and setuptools, as a GPU image does. (A folder, not a
# venv: that python may itself be a venv's, whose packages a new venv would not see.)
set -euo pipefail
cd "$(dirname "$0")/.."
py=${NACT_GPU_PYTHON:-python3}
site=${NACT_GPU_SITE:-/tmp/nact-gpu-site}
"$py" -c "import torch, numpy, typer, rich, safetensors, pytest, setuptools" || {
  echo "$py lacks torch, numpy, typer, rich, safetensors, pytest or setuptools" >&2; exit 2; }
if [ ! -x "$site/bin/nact" ]; then
  "$py" -m pip install --quiet --no-index --no-deps --no-build-isolation --target "$site" .
fi
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" PATH="$site/bin:$PATH"
python() { "$py" "$@"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
nact --version
NACT_TEST_INSTALLED=1 python -m pytest -q tests/test_cuda.py tests/test_metric.py tests/test_metric_paths.py \
  -k "cuda or gpu" -p no:cacheprovider
python bench/scan_bench.py --sizes 4 --dtypes f32 bf16 --runs 3 --device cpu --device cuda --no-naive --startup-runs 5
python bench/sae_bench.py --d-in 2304 --d-sae 16384 --tokens 65536 --device cuda --runs 3
python bench/sae_bench.py --d-in 2304 --d-sae 16384 --tokens 16384 --device cpu --runs 1
if python -c "import torchmetrics" 2>/dev/null; then  # the training metric's extra
  python bench/metric_bench.py --dtypes f32 bf16 --device cuda --device cpu
else
  echo "torchmetrics is not installed: the metric's tests with a collection and its benchmark are skipped" >&2
fi
