#!/usr/bin/env bash
# TSM vs TSN on the synthetic time-reversed pairs (docs/temporal_benchmark.md).
# Run from any working folder; WORK holds the corpus, runs and mlflow.db.
# Both trainings run at once (one torch thread and one loader worker each),
# as they were for the published figures on a 2-core machine.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
TSM="$REPO/.venv/bin/tsm"
WORK="${WORK:-/tmp/tsm-bench}"
ARCH="${ARCH:-resnet18}"  # the bundled model's backbone
mkdir -p "$WORK" && cd "$WORK"

[ -f synth2000/test.csv ] || "$TSM" data synth synth2000 --videos 2000 --seed 2019
"$TSM" models list >/dev/null  # creates mlflow.db once, before two writers race for it

for kind in tsm tsn; do
  flag=""; [ "$kind" = tsn ] && flag="--no-shift"
  "$TSM" train --train synth2000/train.csv --val synth2000/val.csv \
      --arch "$ARCH" --segments 8 --input-size 32 --resize-size 36 --dropout 0.2 $flag \
      --epochs 16 --batch-size 16 --lr 0.001 --seed 0 --threads 1 --workers 1 \
      --name tsm-synthetic --out "runs/$kind" --run-name "$kind-$ARCH-32px" \
      > "train_$kind.log" 2>&1 &
done
wait

# the newest registered version of each kind
latest() {
  "$REPO/.venv/bin/python" -c "from registry.versions import list_versions
vs = [v for v in list_versions('tsm-synthetic') if v.tags.get('temporal') == '$1']
print(max(vs, key=lambda v: int(v.version)).version)"
}
TSM_V=$(latest tsm)
TSN_V=$(latest tsn)
"$REPO/.venv/bin/python" "$REPO/bench/temporal_benchmark.py" \
    --tsm "models:/tsm-synthetic/$TSM_V" --tsn "models:/tsm-synthetic/$TSN_V" \
    --manifest synth2000/test.csv \
    --tsm-history runs/tsm/history.json --tsn-history runs/tsn/history.json \
    --out-md "temporal_results_$ARCH.md" --out-png "$REPO/docs/temporal_training_curves_$ARCH.png" \
    --out-dir "runs/benchmark-$ARCH"
