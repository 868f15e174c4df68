#!/usr/bin/env bash
# Open the app on the embedded default (shipped demo checkpoints + generated phantom data). Offline, CPU only.
# CXR_ADDRESS / CXR_PORT: where it listens (default 127.0.0.1:8501). CXR_MAX_UPLOAD_MB: the largest upload
# (default 32); Streamlit refuses bigger files itself and the Compare page checks again. For a team server see
# the README's "Deploying for a team" (CXR_DATA_ROOTS, CXR_LLM_ALLOWED_BASE_URLS, CXR_JOB_LAUNCHERS, ...).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh run
upload_mb="${CXR_MAX_UPLOAD_MB:-32}"
# Streamlit's option takes whole megabytes; round a fractional setting up (the app's own check is exact).
upload_mb="$(.venv/bin/python -c 'import math,sys; print(max(1, math.ceil(float(sys.argv[1]))))' "$upload_mb" 2>/dev/null || echo 32)"
exec .venv/bin/python -m streamlit run app.py --server.address "${CXR_ADDRESS:-127.0.0.1}" \
  --server.port "${CXR_PORT:-8501}" --server.maxUploadSize "$upload_mb" --server.headless true \
  --browser.gatherUsageStats false "$@"
