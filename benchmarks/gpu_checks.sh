#!/usr/bin/env bash
# The checks that need a GPU, as one prepared run of under ten minutes on one CUDA machine:
#   1. inference time of the bundled model on the GPU (benchmarks/bench_inference.py, median of 10 after warm-up),
#   2. `cacnode score` of a phantom on the GPU through the user-facing command, and the bundled model's figures
#      with the network on the GPU (fp16 autocast) on held-out phantoms, per case, to compare with the CPU,
#   3. time-boxed training runs of the whole pipeline (network, lesion classifier, calibration) from
#      training-gpu.toml, one per entry of TRAIN_RUNS ("a": family a only, "b": family b only, "ab": both),
#      side by side on the one GPU; their weights files and logs land in $OUT for evaluation elsewhere.
# Sizes of the training runs come from the variables below; every run is stopped at DEADLINE seconds after the
# start.  On a 16-core H200 machine three runs side by side did not finish in 520 s: generating and caching the
# phantoms on the CPU, not the GPU, is the bottleneck, so the default is one run.  Prints figures; asserts
# nothing.  Usage: OUT=/tmp/out bash benchmarks/gpu_checks.sh
set -u -o pipefail
OUT=${OUT:-/tmp/gpu-checks}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
py=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
EVAL_N=${EVAL_N:-20}
TRAIN_RUNS=${TRAIN_RUNS:-ab}
DEADLINE=${DEADLINE:-520}
ACCELERATOR=$([ "$DEVICE" = cuda ] && echo gpu || echo cpu)
PRECISION=$([ "$DEVICE" = cuda ] && echo 16-mixed || echo 32)
start=$SECONDS
cacnode() { $py -c 'import sys; from cacnode.cli import main; sys.exit(main(sys.argv[1:]))' "$@"; }

{
  nvidia-smi -L 2>/dev/null; echo "cores $(nproc)"
  $py -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available() and torch.cuda.get_device_name())'
  echo "== bench_inference $DEVICE"; $py benchmarks/bench_inference.py --device "$DEVICE" --repeats "${BENCH_REPEATS:-10}"
} 2>&1 | tee "$OUT/checks.log"

# The training runs share the cores; each gets its own config, work folder and log.
runs=$(echo $TRAIN_RUNS | wc -w)
per=$(( ($(nproc) - 1) / (runs > 0 ? runs : 1) )); [ "$per" -ge 1 ] || per=1
for run in $TRAIN_RUNS; do
  families=$(echo "$run" | sed 's/./"&", /g; s/, $//')
  sed -e "s|^output = .*|output = \"$OUT/gpu-$run.pt\"|" \
      -e "s|^work_dir = .*|work_dir = \"/tmp/gc-train-$run\"|" \
      -e "s|^version = .*|version = \"2.0.0-$run\"|" \
      -e "s|^families = .*|families = [$families]|" \
      -e "s|^phantom_train = .*|phantom_train = ${TRAIN_PHANTOMS:-160}|" \
      -e "s|^phantom_val = .*|phantom_val = ${VAL_PHANTOMS:-16}|" \
      -e "s|^classifier_phantoms = .*|classifier_phantoms = ${CLASSIFIER_PHANTOMS:-200}|" \
      -e "s|^classifier_hard_ostia_phantoms = .*|classifier_hard_ostia_phantoms = ${HARD_OSTIA_PHANTOMS:-40}|" \
      -e "s|^calibration_phantoms = .*|calibration_phantoms = ${CALIBRATION_PHANTOMS:-20}|" \
      -e "s|^classifier_epochs = .*|classifier_epochs = ${CLASSIFIER_EPOCHS:-40}|" \
      -e "s|^channels = .*|channels = [${CHANNELS:-8, 16, 32, 48}]|" \
      -e "s|^max_minutes = .*|max_minutes = ${TRAIN_MINUTES:-2.5}|" \
      -e "s|^samples_per_epoch = .*|samples_per_epoch = ${SAMPLES_PER_EPOCH:-512}|" \
      -e "s|^check_val_every_n_epoch = .*|check_val_every_n_epoch = ${VAL_EVERY:-4}|" \
      -e "s|^prepare_workers = .*|prepare_workers = $per|" \
      -e "s|^num_workers = .*|num_workers = $(( per > 1 ? per - 1 : 0 ))|" \
      -e "s|^accelerator = .*|accelerator = \"$ACCELERATOR\"|" \
      -e "s|^precision = .*|precision = \"$PRECISION\"|" \
      training-gpu.toml > "/tmp/gc-train-$run.toml"
  left=$(( DEADLINE - (SECONDS - start) ))
  ( grep -v '^#' "/tmp/gc-train-$run.toml" | grep .
    timeout "$left" $py -c 'import sys; from cacnode.cli import main; sys.exit(main(sys.argv[1:]))' \
      train --config "/tmp/gc-train-$run.toml"
    status=$?
    cat "/tmp/gc-train-$run"/logs/version_0/metrics.csv 2>/dev/null
    echo "exit $status after $(( SECONDS - start )) s" ) > "$OUT/train-$run.log" 2>&1 &
done

{
  echo "== cacnode score on $DEVICE"
  cacnode phantom /tmp/gc-phantom --n 1 --seed 920012 --no-progress --workers 1 \
    && time cacnode score /tmp/gc-phantom/case-920012/dicom --device "$DEVICE" --json --sr /tmp/gc-sr.dcm
  echo "== evaluate the bundled model on $DEVICE, family a seeds 1030000-$(( 1030000 + EVAL_N - 1 ))"
  $py -m training.evaluate models/cacnode-v1.pt --family a --first-seed 1030000 --n "$EVAL_N" --device "$DEVICE" --workers 2
} 2>&1 | tee -a "$OUT/checks.log"
[ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv >> "$OUT/checks.log" 2>&1
wait
echo "== done after $(( SECONDS - start )) s" | tee -a "$OUT/checks.log"
tail -n 3 "$OUT"/train-*.log
ls -la "$OUT"
