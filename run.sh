#!/usr/bin/env bash
# Open the app on the embedded default (shipped demo checkpoints + generated phantom data). Offline, CPU only.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh run
exec .venv/bin/python -m streamlit run app.py --server.address "${CXR_ADDRESS:-127.0.0.1}" \
  --server.port "${CXR_PORT:-8501}" --server.headless true --browser.gatherUsageStats false "$@"
