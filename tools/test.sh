#!/usr/bin/env bash
# Set up a virtual environment (if needed) with the project and its test tools, then run the tests.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${SC_VENV:-.venv}
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[test,progress]'
exec "$venv/bin/python" -m pytest "$@"
