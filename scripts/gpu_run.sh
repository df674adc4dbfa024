#!/usr/bin/env bash
# The CUDA half of the suite on a GPU machine that receives a copy of this tree per run.
#
#   1. here:       .venv/bin/python scripts/gpu_bundle.py --capability 9.0
#   2. device run: carry .gpu-bundle/stage1, command: bash scripts/gpu_run.sh 1
#   3. device run: carry .gpu-bundle/stage2, command: bash scripts/gpu_run.sh 2
#      (right after 2: /tmp on that machine survives only while it stays up)
#   4. optional, right after 3, for `make bench` on the GPU (bundle made with --bench):
#      device run: carry .gpu-bundle/stage3, command: bash scripts/gpu_run.sh 3
#   5. here:       copy what came back (cuda-results.json, bench-h100.json) to results/, `make report`.
#
# The fusion matrix needs no model file, one run per backend:
#   here:       .venv/bin/python scripts/gpu_bundle.py --fusion --capability 9.0
#   device run: (nothing carried)      command: bash scripts/gpu_run.sh fusion xla-cuda matrix
#   device run: (nothing carried)      command: bash scripts/gpu_run.sh fusion xla-cuda tests
#   device run: carry .gpu-bundle/fusion, command: bash scripts/gpu_run.sh fusion iree-cuda
#   (each writes fusion-h100-<backend>.json; then the cuda-marked fusion tests run)
#
# Our int4 GEMV kernel (issue 27), two runs back to back, nothing carried (each under 10 minutes):
#   device run: command: bash scripts/gpu_run.sh kernel sweep     (the GPU tests of both variants,
#               the sweep at batch 1 with Mosaic GPU, then at batches 4 and 16)
#   device run: command: bash scripts/gpu_run.sh kernel verdict   (the verdict with our kernel, plain
#               and stacked, beside the best in-graph form, every dense form and tinygemm)
#   here: copy pallas-gemv-*.json, pytest-cuda-pallas-*.json and verdict-*.json to results/
#
# Stage 2 writes cuda-results.json and the pytest log into $OUT (or ./gpu-out).
set -euo pipefail
stage=${1:?stage 1, 2 or 3}
out=${OUT:-$PWD/gpu-out}
mkdir -p "$out" /tmp/stage
if [ "$stage" = 1 ]; then
  cp .gpu-bundle/stage1/model.part0 /tmp/stage/
  ls -la /tmp/stage
  exit 0
fi
if [ "$stage" = fusion ]; then
  backend=${2:?backend: xla-cuda or iree-cuda}
  b=.gpu-bundle/fusion
  export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
  if [ "$backend" = iree-cuda ]; then  # XLA needs nothing carried
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$b"/whl/*.whl
    export MODEL_IMPL_CACHE=$PWD/$b/cache
    export MODEL_IMPL_IREE_COMPILER=$(python3 -c "import json; print(json.load(open('$b/manifest.json'))['iree_compiler'])")
    export MODEL_IMPL_IREE_CUDA_TARGETS=$(python3 -c "import json; print(','.join(json.load(open('$b/manifest.json'))['bundled_cuda_targets']))")
  fi
  export MODEL_IMPL_RESULTS_OUT=$out/pytest-cuda-fusion-$backend.json
  nvidia-smi --query-gpu=name,driver_version,compute_cap --format=csv | tee "$out/nvidia-smi.txt"
  set -o pipefail
  part=${3:-both}  # matrix | tests | both (a full XLA-CUDA matrix alone takes ~8 of a run's 10 minutes)
  if [ "$part" != tests ]; then
    python3 -m model_impl fusion --backends "$backend" --parity-model synthetic --steps 32 \
      --out "$out/fusion-h100-$backend.json" 2>&1 | grep --line-buffered -v Warning | tee "$out/fusion-$backend.log"
  fi
  if [ "$part" != matrix ]; then
    python3 -m pytest tests/cuda -m cuda -k "fusion and ${backend//-/_}" -p no:cacheprovider -ra 2>&1 | tee "$out/pytest-fusion.log"
  fi
  exit
fi
if [ "$stage" = kernel ]; then
  export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
  gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | grep -oE '[A-Z]+[0-9]+' | head -1 | tr A-Z a-z)
  nvidia-smi --query-gpu=name,driver_version,compute_cap --format=csv | tee "$out/log.txt"
  set -o pipefail
  if [ "${2:?kernel sweep or kernel verdict}" = sweep ]; then
    MODEL_IMPL_RESULTS_OUT=$out/pytest-cuda-pallas-$gpu.json timeout 120 \
      python3 -m pytest -q -p no:cacheprovider -m cuda tests/cuda/test_pallas_int4_cuda.py 2>&1 | tail -25 >> "$out/log.txt" || true
    timeout 170 python3 -m model_impl pallas-sweep --mosaic --budget-s 100 --out "$out/pallas-gemv-$gpu.json" 2>&1 \
      | grep -v "Warn" | tail -60 >> "$out/log.txt" || true
    for b in 4 16; do
      timeout 120 python3 -m model_impl pallas-sweep --batch $b --no-head --mosaic --budget-s 50 \
        --out "$out/pallas-gemv-$gpu-b$b.json" 2>&1 | grep -v "Warn" | tail -40 >> "$out/log.txt" || true
    done
  else
    timeout 570 python3 -m model_impl verdict --backend xla-cuda --parts bandwidth,dense,int4,anchors \
      --forms pallas-triton:stacked,pallas-triton,u4-magic:stacked:reduce \
      --out "$out/verdict-$gpu-$(date -u +%F).json" 2>&1 | grep -v "Warn" | tail -120 >> "$out/log.txt" || true
  fi
  tail -c 11000 "$out/log.txt"
  exit
fi
if [ "$stage" = 3 ]; then
  [ -f /tmp/stage/model.gguf ] && [ -d /tmp/site ] || { echo "run stages 1 and 2 first (machine replaced?)" >&2; exit 3; }
  mkdir -p /tmp/stage/cache/iree
  if [ -d .gpu-bundle/stage3 ]; then cp .gpu-bundle/stage3/cache/iree/* /tmp/stage/cache/iree/; fi  # IREE modules (--bench)
  source /tmp/stage/env.sh
  export MODEL_IMPL_CACHE=/tmp/stage/cache BENCH_BACKENDS=${BENCH_BACKENDS:-xla-cuda,iree-cuda} BENCH_RESULTS_DIR=$out BENCH_RESULTS_NAME=${BENCH_RESULTS_NAME:-bench-h100}
  set -o pipefail
  python3 -m pytest benchmarks -p no:cacheprovider --benchmark-columns=median,iqr,rounds 2>&1 | tee "$out/bench.log"
  exit
fi
b=.gpu-bundle/stage2
if [ ! -f /tmp/stage/model.part0 ]; then
  echo "the machine was replaced since stage 1 (/tmp/stage is empty): run stage 1 again" >&2
  exit 3
fi
cat /tmp/stage/model.part0 "$b/model.part1" > /tmp/stage/model.gguf
want=$(python3 -c "import json; print(json.load(open('$b/manifest.json'))['model_sha256'])")
echo "$want  /tmp/stage/model.gguf" | sha256sum -c -
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$b"/whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export MODEL_IMPL_DEFAULT_MODEL=/tmp/stage/model.gguf
export MODEL_IMPL_CACHE=$PWD/$b/cache
export MODEL_IMPL_IREE_COMPILER=$(python3 -c "import json; print(json.load(open('$b/manifest.json'))['iree_compiler'])")
export MODEL_IMPL_IREE_CUDA_TARGETS=$(python3 -c "import json; print(','.join(json.load(open('$b/manifest.json'))['bundled_cuda_targets']))")
cat > /tmp/stage/env.sh <<ENV
export PYTHONPATH=$PYTHONPATH PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export MODEL_IMPL_DEFAULT_MODEL=$MODEL_IMPL_DEFAULT_MODEL
export MODEL_IMPL_IREE_COMPILER=$MODEL_IMPL_IREE_COMPILER
export MODEL_IMPL_IREE_CUDA_TARGETS=$MODEL_IMPL_IREE_CUDA_TARGETS
ENV
export MODEL_IMPL_REPRO_VMFB=$PWD/$b/iree-cuda-gemv.vmfb  # gpu_bundle.py compiled it (no compiler there)
export MODEL_IMPL_RESULTS_OUT=$out/cuda-results.json
nvidia-smi --query-gpu=name,driver_version,compute_cap --format=csv | tee "$out/nvidia-smi.txt"
set -o pipefail
python3 -m pytest tests/cuda -m cuda -k "not fusion" -p no:cacheprovider -ra 2>&1 | tee "$out/pytest.log"  # fusion: its own run
