#!/usr/bin/env bash
# Every GPU measurement of issue 16 in one go, for a borrowed GPU machine with torch but no Ray/Optuna:
# the CUDA tests of Config.cuda_graphs, fractional GPUs (eager vs CUDA graphs, batch 32 and 128, without and
# with NVIDIA MPS), one step's profile, width 1.0, and the epoch against a peer-style loop. Each script appends
# its section to benchmarks/RESULTS.md; the log and RESULTS.md are copied to $OUT (if set) after each step, so a
# run cut short still returns what it measured.
#   bash benchmarks/gpu_suite.sh            # from the repository root, about 8 minutes on an H200
set -u
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/gpu_suite}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TUNE_SIAMESE_CACHE=${TUNE_SIAMESE_CACHE:-/tmp/tune_siamese_cache}
status=0
step() {  # run one measurement; keep going on failure, but remember it
    echo "=== $* ($(date -u +%H:%M:%S))"
    "$@" || { echo "=== FAILED (exit $?): $*"; status=1; }
    cp benchmarks/RESULTS.md "$out/RESULTS.md"
}
exec > >(tee "$out/log.txt") 2>&1
nvidia-smi --query-gpu=name,driver_version,compute_mode,memory.total --format=csv
step python3 -m pytest -q -p no:cacheprovider tests/test_cuda_graph.py -k graphed_training -rs
step python3 benchmarks/fractional_gpu.py --fractions 1,0.25 --epochs 10 --steps eager,graphs \
    --batch-sizes 32,128 --mps off,on
step python3 benchmarks/gpu_profile.py --trace-dir "$out"
step python3 benchmarks/fractional_gpu.py --width 1 --fractions 1 --epochs 5 --steps eager,graphs \
    --batch-sizes 32,128
step python3 benchmarks/epoch_vs_peer.py --data synthetic --epochs 1 --noise-seeds 0
# Layouts: graphs with NCHW instead of channels_last, and fp32 NCHW (the profile names the slow kernels)
step python3 benchmarks/fractional_gpu.py --no-channels-last --steps graphs --batch-sizes 32,128 --fractions 1,0.25 \
    --mps off,on --epochs 10
step python3 benchmarks/gpu_profile.py --no-channels-last
step python3 benchmarks/gpu_profile.py --no-channels-last --precision fp32
exit $status
