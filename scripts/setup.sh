#!/usr/bin/env bash
# Set-up shared by run.sh and test.sh: a virtual environment in .venv with the pinned packages.
# Re-running is cheap: packages are reinstalled only when a requirements file changes.
set -euo pipefail
cd "$(dirname "$0")/.."
want=${1:-run}   # run | test
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
req=requirements.txt
[ "$want" = test ] && req=requirements-test.txt
stamp=".venv/.installed-$(cat requirements.txt requirements-test.txt pyproject.toml | sha256sum | cut -c1-16)-$want"
if [ ! -f "$stamp" ]; then
  echo "installing Python packages from $req (torch comes from this machine's wheel cache when present)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -r "$req"
  .venv/bin/python -m pip install --quiet --no-deps -e .
  touch "$stamp"
fi
if [ "$want" = test ] && ! command -v chromium >/dev/null 2>&1; then
  echo "installing Debian's chromium for the browser tests"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -q && $SUDO apt-get install -y -q chromium
fi
if [ "$want" = test ] && { ! command -v dciodvfy >/dev/null 2>&1 || ! command -v dsrdump >/dev/null 2>&1 || ! command -v Orthanc >/dev/null 2>&1; }; then
  # tests/pacs: DICOM objects checked with dicom3tools (dciodvfy) and dcmtk (dsrdump); a PACS (Orthanc with its
  # DICOMweb plugin) started on 127.0.0.1 by the tests.
  echo "installing Debian's dicom3tools, dcmtk, orthanc and orthanc-dicomweb for the DICOM and PACS tests"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  if ! { $SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q dicom3tools dcmtk orthanc orthanc-dicomweb; }; then
    echo "note: could not install dicom3tools, dcmtk and orthanc; the tests that need them will skip"
  fi
fi
if [ "$want" = test ] && ! command -v sbatch >/dev/null 2>&1; then
  # tests/training/test_slurm.py starts a single-node Slurm cluster (slurmctld, slurmd, munged) on 127.0.0.1.
  echo "installing Debian's slurm-wlm and munge for the Slurm backend tests"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  if ! { $SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q slurm-wlm munge; }; then
    echo "note: could not install slurm-wlm and munge; tests/training/test_slurm.py will skip its cluster tests"
  fi
fi
