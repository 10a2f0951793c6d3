#!/usr/bin/env bash
# Refit the bundled model's lesion classifier on many phantoms on one CUDA machine, calibrate it and
# evaluate it against the bundled model on held-out phantoms of both families, as one prepared run of
# under ten minutes.  The network is kept; the phantoms are generated on every core (the bottleneck)
# and the classifier is fitted on the GPU.  Stages are time-boxed so that what finished lands in $OUT:
# the new weights file (refit.pt), the logs and the per-case outcomes of each family (cases_a/b.jsonl).
# Prints figures; asserts nothing.  Usage: OUT=/tmp/out bash benchmarks/gpu_classifier.sh
set -u -o pipefail
OUT=${OUT:-/tmp/gpu-classifier}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
py=${PYTHON:-python3}
WORKERS=${WORKERS:-$(( $(nproc) - 1 ))}
ACCELERATOR=${ACCELERATOR:-gpu}
N=${N:-720}; HARD=${HARD:-80}; EPOCHS=${EPOCHS:-30}; CAL_N=${CAL_N:-30}; EVAL_N=${EVAL_N:-200}
VERSION=${VERSION:-2.1.0}
start=$SECONDS
{ nvidia-smi -L 2>/dev/null; echo "cores $(nproc), workers $WORKERS"; } | tee "$OUT/run.log"
cp models/cacnode-v1.pt /tmp/gc-base.pt
timeout "${FIT_SECONDS:-300}" $py -m training.fit_classifier /tmp/gc-base.pt --output "$OUT/refit.pt" \
  --first-seed 60000 --n "$N" --families a b --hard-ostia "$HARD" --epochs "$EPOCHS" --workers "$WORKERS" \
  --accelerator "$ACCELERATOR" --max-minutes "${FIT_MINUTES:-2.5}" --version "$VERSION" --cache /tmp/gc-candidates 2>&1 | grep -v Warning | tee "$OUT/fit.log"
echo "== fitted after $(( SECONDS - start )) s" | tee -a "$OUT/run.log"
[ -f "$OUT/refit.pt" ] || exit 1
timeout "${CAL_SECONDS:-120}" $py -m training.calibrate "$OUT/refit.pt" --first-seed 20000 --n "$CAL_N" \
  --families a b --min-background-bias 2 --workers "$WORKERS" 2>&1 | grep -v "case .* done" | tee "$OUT/calibrate.log"
echo "== calibrated after $(( SECONDS - start )) s" | tee -a "$OUT/run.log"
for family in a b; do
  timeout "${EVAL_SECONDS:-100}" $py -m training.evaluate "$OUT/refit.pt" /tmp/gc-base.pt --family "$family" \
    --first-seed 900000 --n "$EVAL_N" --workers "$WORKERS" --cases-out "$OUT/cases_$family.jsonl" --record \
    > "$OUT/evaluate_$family.log" 2>&1
  tail -n 30 "$OUT/evaluate_$family.log"
  echo "== family $family evaluated after $(( SECONDS - start )) s" | tee -a "$OUT/run.log"
done
ls -la "$OUT"
