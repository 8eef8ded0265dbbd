#!/usr/bin/env bash
# The main job of the README: set up if needed, then run the embedded demo pipeline (bundled digits data).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/infoard-deploy run demo "$@"
