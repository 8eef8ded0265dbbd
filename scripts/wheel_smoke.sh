#!/usr/bin/env bash
# Packaging check (CI): build the wheel, install it into a fresh virtual environment, and run the packaged
# demo recipe by name from a temporary folder outside the checkout, so recipes and export profiles must come
# from inside the installed package.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
.venv/bin/python -m pip wheel -q --no-deps . -w "$work/dist" >/dev/null
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q --upgrade pip >/dev/null
"$work/venv/bin/python" -m pip install -q "$work"/dist/infoard_deploy-*.whl
mkdir "$work/elsewhere"
cd "$work/elsewhere"
"$work/venv/bin/infoard-deploy" list recipes
"$work/venv/bin/infoard-deploy" --device cpu run demo --json > summary.json
"$work/venv/bin/python" - <<'PY'
import json
s = json.load(open("summary.json"))
assert s["status"].get("verify") == "done", s["status"]
print("wheel smoke: demo ran from the installed wheel:", s["status"])
PY
test -f runs/demo/report/report.md
case "$(cd "$work/venv" && "$work/venv/bin/python" -c 'import infoard_deploy, os; print(os.path.dirname(infoard_deploy.__file__))')" in
  "$root"*) echo "wheel smoke: imported the checkout, not the wheel" >&2; exit 1 ;;
esac
