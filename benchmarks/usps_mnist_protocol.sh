#!/usr/bin/env bash
# The full usps_mnist protocol of docs/results.md: 3 methods x 5 seeds at the given label
# budgets (labels per class), each budget in its own single-threaded process, two at a time.
#   JADEKIT_DATA=../shared/data benchmarks/usps_mnist_protocol.sh runs 100 10
#   SEEDS="[0, 1, 2]" JADEKIT_DATA=../shared/data benchmarks/usps_mnist_protocol.sh runs 25 50 250   # label curve
set -euo pipefail
export JADEKIT_DATA=${JADEKIT_DATA:-../shared/data}
out=$1
shift
start=$(date +%s)
budget() {
  jadekit run recipes/usps_mnist.toml --set primary.labels_per_class="$1" ${SEEDS:+--set "experiment.seeds=$SEEDS"} \
    --set experiment.output_dir="$out/usps_mnist_$1" --set train.threads=1 > "$out/usps_mnist_$1.log" 2>&1
  echo "labels_per_class=$1 done after $(( $(date +%s) - start )) s"
}
mkdir -p "$out"
running=0
for n in "$@"; do
  budget "$n" &
  running=$((running + 1))
  if [ "$running" -ge "${PARALLEL:-2}" ]; then wait -n; running=$((running - 1)); fi
done
wait
echo "wall time: $(( $(date +%s) - start )) s"
