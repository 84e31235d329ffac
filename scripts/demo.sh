#!/usr/bin/env bash
# The main job: set up, train PPO on Pendulum-v1 (with gravity), evaluate it on 100 held-out episodes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
rm -rf runs/demo-ppo  # the demo starts afresh each time
.venv/bin/duetrl train Pendulum-v1 --algo ppo --run-dir runs/demo-ppo --seed 0 "$@"
.venv/bin/duetrl eval runs/demo-ppo --episodes 100 --deterministic
