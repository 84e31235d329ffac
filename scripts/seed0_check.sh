#!/usr/bin/env bash
# The numbers-do-not-move check for a refactor: train every Pendulum-v1 preset on seed 0 and print its mean over
# the 100 held-out episodes (deterministic), one line per algorithm.
#   bash scripts/seed0_check.sh [SRC_DIR]   # SRC_DIR: a checkout's src/ (default: this one), e.g. a git worktree
# Compare the output of the commit before a change with the one after: on one machine they must be equal.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
src="${1:-$here/src}"
py="$here/.venv/bin/python"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for algo in ppo sac td3 ddpg ac a2c; do
  PYTHONPATH="$src" "$py" -m duetrl.cli train Pendulum-v1 --algo "$algo" --seed 0 --quiet --run-dir "$work/$algo" >/dev/null 2>&1
  PYTHONPATH="$src" "$py" -m duetrl.cli eval "$work/$algo" --episodes 100 --deterministic --json 2>/dev/null |
    "$py" -c "import json, sys; print('$algo', repr(json.load(sys.stdin)['mean_return']))"
done
