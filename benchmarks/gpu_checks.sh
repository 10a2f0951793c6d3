#!/usr/bin/env bash
# The checks that need a GPU, as one prepared run (the `device` tool of the workplace, or any CUDA box):
#   1. inference time of the bundled model on the GPU (benchmarks/bench_inference.py; issue 4: <= 0.3 s on an H100),
#   2. the bundled model's held-out figures with the network on the GPU (fp16 autocast) for comparison with the
#      CPU figures recorded in the weights file,
#   3. `cacnode score` of a phantom DICOM series on the GPU through the user-facing command,
#   4. a time-boxed network training run from training-gpu.toml (GPU_TRAIN_MINUTES, default 4.5), network only:
#      its weights file and Lightning CSV log land in $OUT for evaluation elsewhere; GPU_TRAIN_MINUTES=0 skips it.
# QUICK=1 skips the CPU benchmark and `cacnode score`; EVAL_N sets the number of held-out phantoms (default 50).
# Prints figures; asserts nothing.  Usage: OUT=/tmp/out bash benchmarks/gpu_checks.sh
set -u -o pipefail
OUT=${OUT:-/tmp/gpu-checks}; mkdir -p "$OUT"
DEVICE=${DEVICE:-cuda}
EVAL_N=${EVAL_N:-50}
export PYTHONUNBUFFERED=1 PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
py=${PYTHON:-python3}
cacnode() { $py -c 'import sys; from cacnode.cli import main; sys.exit(main(sys.argv[1:]))' "$@"; }

{
  nvidia-smi -L 2>/dev/null; nproc
  $py -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available() and torch.cuda.get_device_name())'
  echo "== bench_inference $DEVICE"; $py benchmarks/bench_inference.py --device "$DEVICE" --repeats 10
  if [ "${QUICK:-0}" = 0 ]; then
    echo "== bench_inference cpu, all cores"; $py benchmarks/bench_inference.py --device cpu --repeats 3
    echo "== cacnode score on $DEVICE"
    cacnode phantom /tmp/gc-phantom --n 1 --seed 920012 --no-progress --workers 1 \
      && time cacnode score /tmp/gc-phantom/case-920012/dicom --device "$DEVICE" --json --sr /tmp/gc-sr.dcm
  fi
} 2>&1 | tee "$OUT/checks.log"

echo "== evaluate on $DEVICE" | tee "$OUT/eval.log"
$py -m training.evaluate models/cacnode-v1.pt --first-seed 920000 --n "$EVAL_N" --device "$DEVICE" 2>&1 | tee -a "$OUT/eval.log"

[ "${GPU_TRAIN_MINUTES:-4.5}" = 0 ] && exit 0
# Network training, time-boxed: [training] from training-gpu.toml with the run's budget, no classifier.
sed -e "s|^output = .*|output = \"$OUT/gpu-net.pt\"|" \
    -e "s|^work_dir = .*|work_dir = \"/tmp/gc-train\"|" \
    -e "s|^classifier_phantoms = .*|classifier_phantoms = 0|" \
    -e "s|^phantom_val = .*|phantom_val = 10|" \
    -e "s|^max_epochs = .*|max_epochs = ${GPU_TRAIN_EPOCHS:-36}|" \
    -e "s|^max_minutes = .*|max_minutes = ${GPU_TRAIN_MINUTES:-4.5}|" \
    -e "s|^phantom_train = .*|phantom_train = ${GPU_TRAIN_PHANTOMS:-600}|" \
    -e "s|^prepare_workers = .*|prepare_workers = $(( $(nproc) - 1 ))|" \
    -e "s|^num_workers = .*|num_workers = $(( $(nproc) - 2 ))|" \
    ${GPU_TRAIN_SED:+-e "$GPU_TRAIN_SED"} \
    training-gpu.toml > /tmp/gc-train.toml
grep -v '^#' /tmp/gc-train.toml | grep . > "$OUT/train.toml"
if [ "$DEVICE" = cuda ]; then
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 20 > "$OUT/smi.csv" 2>&1 &
fi
time cacnode train --config /tmp/gc-train.toml 2>&1 | tee "$OUT/train.log"
cp /tmp/gc-train/logs/version_0/metrics.csv "$OUT/metrics.csv" 2>/dev/null
ls -la "$OUT"
