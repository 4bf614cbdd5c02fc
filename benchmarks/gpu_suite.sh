#!/usr/bin/env bash
# Every GPU measurement of issue 16 in one go, for a borrowed GPU machine with torch but no Ray/Optuna:
# the CUDA tests of the GPU levers, a profile of CUDA-graph steps with each further lever (cudnn_benchmark,
# stem_fp32, torch.compile), fractional GPUs (today's eager trial vs graphs with the fastest levers, batch 32 and
# 128, without and with NVIDIA MPS), width 1.0, a profile of the chosen levers, and the epoch against a
# peer-style loop. Each script appends its section to benchmarks/RESULTS.md; the log and RESULTS.md are copied
# to $OUT (if set) after each step, so a run cut short still returns what it measured.
#   bash benchmarks/gpu_suite.sh            # from the repository root; about 8 minutes on an H200 (2026-11-29's
#                                           # suite took 6), plus one torch.compile per compile variant
set -u
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/gpu_suite}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TUNE_SIAMESE_CACHE=${TUNE_SIAMESE_CACHE:-/tmp/tune_siamese_cache}
status=0
step() {  # run one measurement, at most STEP_TIMEOUT_S seconds; keep going on failure, but remember it
    echo "=== $* ($(date -u +%H:%M:%S))"
    timeout "${STEP_TIMEOUT_S:-300}" "$@" || { echo "=== FAILED (exit $?): $*"; status=1; }
    cp benchmarks/RESULTS.md "$out/RESULTS.md"
}
exec > >(tee "$out/log.txt") 2>&1
nvidia-smi --query-gpu=name,driver_version,compute_mode,memory.total --format=csv
step python3 -m pytest -q -p no:cacheprovider tests/training/test_cuda_graph.py tests/training/test_gpu_levers.py -rs
# Which further levers pay on top of CUDA graphs (the 2026-11-29 profile: cuDNN's bf16 kernel for the one-channel
# first conv was a quarter of a step); the fastest variant becomes the "tuned" rows below.
step python3 benchmarks/gpu_profile.py --steps graphs --best-out "$out/best_variant" --variants \
    "default;cudnn_benchmark=true;stem_fp32=true;cudnn_benchmark=true,stem_fp32=true;compile=inductor;compile=inductor,cudnn_benchmark=true,stem_fp32=true"
tuned=$(cat "$out/best_variant" 2>/dev/null || echo default)
echo "tuned levers: $tuned"
step python3 benchmarks/fractional_gpu.py --fractions 1,0.25 --epochs 10 --steps eager,tuned --levers "$tuned" \
    --batch-sizes 32,128 --mps off,on
step python3 benchmarks/fractional_gpu.py --width 1 --fractions 1 --epochs 5 --steps eager,tuned --levers "$tuned" \
    --batch-sizes 32,128
step python3 benchmarks/gpu_profile.py --steps eager,graphs --variants "default;$tuned" --trace-dir "$out"
step python3 benchmarks/epoch_vs_peer.py --data synthetic --epochs 1 --noise-seeds 0
exit $status
