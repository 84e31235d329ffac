#!/usr/bin/env bash
# Set up and run the whole test suite (unit tests and the fast learning tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The learning tests also train with two torch threads; on a busy machine, OpenMP threads that spin while waiting for
# a descheduled partner slow such a run by orders of magnitude. Passive waiting changes scheduling, not arithmetic.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
# Two workers (pytest-xdist): CI has two cores, and most tests run on one thread. PYTEST_WORKERS=0 runs in-process.
exec .venv/bin/python -m pytest -q -n "${PYTEST_WORKERS:-2}" --dist worksteal "$@"
