#!/usr/bin/env bash
# Set up a virtual environment (if needed) with the project and its test tools, then run the tests.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/venv.sh
setup_venv '[test,progress,lint]'
exec "$venv/bin/python" -m pytest "$@"
