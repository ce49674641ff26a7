#!/usr/bin/env bash
# The full usps_mnist protocol of docs/results.md: 3 methods x 5 seeds at each label budget
# (labels per class). Each (budget, seed) is one single-threaded `jadekit run`, PARALLEL at a
# time (default 2: one per core here); the seeds of a budget share its output directory, and a
# last `jadekit run` per budget (every run finished, so nothing trains) writes its summary.
# Arguments after `--` go to every `jadekit run`. SPLIT_METHODS=1 runs one process per (budget, seed,
# method) instead: three times the processes, for a GPU host with many cores.
#   JADEKIT_DATA=../shared/data benchmarks/usps_mnist_protocol.sh runs 100 10
#   SEEDS="0 1" benchmarks/usps_mnist_protocol.sh runs 25 50 250                     # label curve
#   nvidia-cuda-mps-control -d   # then, 3.1 min on one H200 (docs/results.md):
#   SPLIT_METHODS=1 PARALLEL=30 benchmarks/usps_mnist_protocol.sh runs-gpu 100 10 -- --set train.device=cuda
set -uo pipefail
export JADEKIT_DATA=${JADEKIT_DATA:-../shared/data}
out=$1
shift
budgets=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do budgets+=("$1"); shift; done
[ $# -gt 0 ] && shift
extra=("$@")
read -ra seeds <<< "${SEEDS:-0 1 2 3 4}"
all_seeds="[$(IFS=,; echo "${seeds[*]}")]"
start=$(date +%s)
failed=0
mkdir -p "$out"

job() {  # budget seed [method]
  local only=() name="usps_mnist_$1_seed$2"
  if [ $# -gt 2 ]; then only=(--set "experiment.methods=[\"$3\"]"); name+="_$3"; fi
  jadekit run recipes/usps_mnist.toml --set primary.labels_per_class="$1" --set "experiment.seeds=[$2]" "${only[@]}" \
    --set experiment.output_dir="$out/usps_mnist_$1" --set train.threads=1 "${extra[@]}" > "$out/$name.log" 2>&1
  local rc=$?
  echo "labels_per_class=$1 seed=$2${3:+ $3} exit $rc after $(( $(date +%s) - start )) s"
  return $rc
}

if [ "${SPLIT_METHODS:-0}" = 1 ]; then methods=(jade paired single); else methods=(""); fi  # longest first

running=0
for n in "${budgets[@]}"; do
  first=""
  for m in "${methods[@]}"; do
    for s in "${seeds[@]}"; do
      if [ "$running" -ge "${PARALLEL:-2}" ]; then wait -n || failed=1; running=$((running - 1)); fi
      job "$n" "$s" ${m:+"$m"} &
      running=$((running + 1))
      if [ -z "$first" ]; then  # let the first run claim the output directory before its siblings start
        first=$!
        while [ ! -e "$out/usps_mnist_$n/jadekit-output.json" ] && kill -0 "$first" 2>/dev/null; do sleep 1; done
      fi
    done
  done
done
while [ "$running" -gt 0 ]; do wait -n || failed=1; running=$((running - 1)); done

for n in "${budgets[@]}"; do
  jadekit run recipes/usps_mnist.toml --set primary.labels_per_class="$n" --set "experiment.seeds=$all_seeds" \
    --set experiment.output_dir="$out/usps_mnist_$n" --set train.threads=1 "${extra[@]}" > "$out/usps_mnist_$n.log" 2>&1 || failed=1
done
echo "wall time: $(( $(date +%s) - start )) s"
exit $failed
