#!/usr/bin/env bash
# Run the whole test suite (unit, Streamlit AppTest, jobs, CLI, headless-Chromium end to end).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh test
exec .venv/bin/python -m pytest -q "$@"
