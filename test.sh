#!/usr/bin/env bash
# Run the whole test suite (unit, Streamlit AppTest, jobs, CLI, REST, headless-Chromium end to end) on two
# worker processes, one test file per worker at a time (module fixtures such as a served app stay in one
# process), in the order tests/conftest.py gives them (longest first, the phantom generated while the other worker
# runs files that need none). `./test.sh -n 0` runs it in this process alone; later arguments override earlier ones.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh test
exec .venv/bin/python -m pytest -q -n "${CXR_TEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder "$@"
