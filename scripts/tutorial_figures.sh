#!/usr/bin/env bash
# The tutorial's runs and learning-curve figures (docs/tutorial.md), reproduced: each configuration on seeds 0 1 2,
# one run at a time, then `duetrl plot` draws docs/figures/*.png and a table of final scores goes to
# docs/figures/tutorial_scores.md. About 20 minutes on 2 CPU cores.
#   bash scripts/tutorial_figures.sh [RUNS_DIR]      # default runs/tutorial; SEEDS="0 1 2" STEPS=150000 to change
# Runs land as RUNS_DIR/<figure>/trials/<configuration>/seed_<n>, the layout of a sweep, so that `duetrl plot`
# draws one line per configuration with a band over the seeds.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
runs="${1:-runs/tutorial}"
seeds="${SEEDS:-0 1 2}"
steps="${STEPS:-150000}"  # the single-env chapter variants: 150k of the listing's 1M steps
duetrl="${DUETRL:-$here/.venv/bin/duetrl}"
figures="$here/docs/figures"
mkdir -p "$figures"

train() {  # train FIGURE LABEL ARGS...: one configuration on every seed
  local figure=$1 label=$2
  shift 2
  for seed in $seeds; do
    local dir="$runs/$figure/trials/$label/seed_$seed"
    local code=0
    if grep -q '"stopped": "interrupted"' "$dir.json" 2>/dev/null; then
      code=130  # stopped by a signal in an earlier call of this script: resumed below
    elif grep -q '"mean_return"' "$dir.json" 2>/dev/null; then
      continue  # done already
    else
      rm -rf "$dir"
      mkdir -p "$(dirname "$dir")"
      $duetrl train Pendulum-v1 --seed "$seed" --quiet --run-dir "$dir" "$@" >"$dir.json" 2>/dev/null || code=$?
    fi
    for _ in 1 2 3; do  # a run stopped by a signal (exit 130) continues exactly where it stopped
      [ "$code" = 130 ] || break
      code=0
      $duetrl train --resume "$dir" --quiet >"$dir.json" 2>/dev/null || code=$?
    done
    if [ "$code" != 0 ]; then
      echo "failed: $figure/$label seed $seed (exit $code)" >&2
      exit 1
    fi
  done
}

chapter=(--algo ac --preset chapter --steps "$steps" --set eval_every=10000)

# 1. The listing, without and with gravity.
train chapter g0 "${chapter[@]}" --env-kwargs g=0
train chapter g10 "${chapter[@]}" --env-kwargs g=10

# 2. With gravity, the fixes one at a time, each on top of the one before.
train fixes 1-chapter "${chapter[@]}"
train fixes 2-truncation "${chapter[@]}" --set bootstrap_truncation=true
train fixes 3-gae "${chapter[@]}" --set bootstrap_truncation=true advantage=gae gae_lambda=0.95
train fixes 4-normalise "${chapter[@]}" --set bootstrap_truncation=true advantage=gae gae_lambda=0.95 \
  normalize_reward=true
train fixes 5-batched "${chapter[@]}" --set bootstrap_truncation=true advantage=gae gae_lambda=0.95 \
  normalize_reward=true update_every=8 --num-envs 16

# 3. The shipped presets: ac at its best, PPO and SAC.
train algorithms ac --algo ac --set eval_every=20000
train algorithms ppo --algo ppo --set eval_every=10000
train algorithms sac --algo sac

for figure in chapter fixes algorithms; do
  $duetrl plot "$runs/$figure" -o "$figures/$figure.png" --title "Pendulum-v1: $figure (seeds ${seeds// /, })"
done
$duetrl plot "$runs/algorithms" -o "$figures/algorithms_time.png" --x wall_time_s \
  --title "Pendulum-v1: the presets against wall time (seeds ${seeds// /, })"

# The final evaluation of every run (10 held-out episodes each), as a Markdown table.
"${PYTHON:-$here/.venv/bin/python}" - "$runs" >"$figures/tutorial_scores.md" <<'PY'
import json, statistics, sys
from pathlib import Path

root = Path(sys.argv[1])
print("| figure | configuration | final eval return per seed | median | env steps | seconds per run |")
print("|---|---|---|---|---|---|")
for figure in ("chapter", "fixes", "algorithms"):
    for config in sorted((root / figure / "trials").iterdir()):
        results = [json.loads(p.read_text()) for p in sorted(config.glob("seed_*.json"))]
        scores = [r["mean_return"] for r in results]
        times = [r["wall_time_s"] for r in results]
        print(
            f"| {figure} | {config.name} | {' / '.join(f'{s:.0f}' for s in scores)} | {statistics.median(scores):.0f} "
            f"| {results[0]['env_steps']:,} | {min(times):.0f}-{max(times):.0f} |"
        )
PY
cat "$figures/tutorial_scores.md"
