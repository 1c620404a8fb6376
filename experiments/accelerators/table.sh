#!/usr/bin/env bash
# The accelerator table: `lvns plan` of four sizes for TPU slices (this script) and H100s (the GPU rows
# need the cuda venv, see README.md). One JSON per (size, topology) into experiments/accelerators/.
#   experiments/accelerators/table.sh [SIZE ...]        SIZE: default vctk 100k 1m (default: all)
# Each compile takes minutes on 2 cores; a size/topology pair whose JSON exists is skipped.
set -u
cd "$(dirname "$0")/../.."
LVNS=${LVNS:-.venv/bin/lvns}
TOPOLOGIES=${TOPOLOGIES:-"v5e:2x4 v5e:8x8 v5p:2x4x4 v6e:2x4"}
declare -A SIZE=(
  [default]=""
  [vctk]="container_size=500 breed_size=100 k=50"
  [100k]="container_size=102400 breed_size=10240 k=30 knn=incremental"
  [1m]="container_size=1048576 breed_size=102400 k=30 knn=incremental"
)
sizes=("$@"); [ ${#sizes[@]} -eq 0 ] && sizes=(default vctk 100k 1m)
for s in "${sizes[@]}"; do
  for t in $TOPOLOGIES; do
    out="experiments/accelerators/${s}-${t//:/-}.json"
    [ -e "$out" ] && { echo "skip $out (exists)"; continue; }
    echo "== $s $t  $(date -u +%H:%M:%S)"
    # shellcheck disable=SC2086
    timeout "${PLAN_TIMEOUT:-1800}" $LVNS plan ${SIZE[$s]} --topology "$t" --json "$out" || echo "!! $s $t: exit $?"
  done
done
