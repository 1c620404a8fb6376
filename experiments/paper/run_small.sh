#!/usr/bin/env bash
# The small-size paper experiments of experiments/README.md, then their figures.
#   bash experiments/paper/run_small.sh [GENERATIONS] [OUT_DIR]
# Untrained real-size models by default (see each TOML); add rave=... vggish=... to the
# `lvns run` line below for trained ones.
set -euo pipefail
cd "$(dirname "$0")/../.."
G=${1:-30}
OUT=${2:-runs/paper}
LVNS=${LVNS:-lvns}
mkdir -p "$OUT"
for name in small control_random rule_farthest mutation_add_uniform mutation_replace_normal \
            mutation_replace_uniform init_normal; do
  if [ -f "$OUT/$name/metrics.jsonl" ] && [ "$(wc -l < "$OUT/$name/metrics.jsonl")" -gt "$G" ]; then
    echo "skip $name (done)"; continue
  fi
  if [ -d "$OUT/$name/checkpoints" ]; then
    $LVNS run --resume "$OUT/$name" generations="$G" progress=false
  else
    $LVNS run "experiments/paper/$name.toml" generations="$G" progress=false --out "$OUT/$name"
  fi
done
mkdir -p experiments/results
$LVNS plot "$OUT/small" "$OUT/control_random" "$OUT/rule_farthest" \
    --labels "novelty nearest (paper),random survival (control),farthest + re-eval (original code)" \
    --title "small setup 50/30 k 30 - UNTRAINED RAVE v1 + VGGish" --out experiments/results/novelty_vs_control.png
$LVNS plot "$OUT/small" "$OUT/mutation_add_uniform" "$OUT/mutation_replace_normal" "$OUT/mutation_replace_uniform" \
    --labels "add normal (paper),add uniform,replace normal,replace uniform" \
    --title "mutation operators - UNTRAINED RAVE v1 + VGGish" \
    --out experiments/results/mutation_operators.png --pca-generations none
$LVNS plot "$OUT/small" "$OUT/init_normal" --labels "init uniform,init normal" \
    --title "initialisation - UNTRAINED RAVE v1 + VGGish" --out experiments/results/init.png --pca-generations none
