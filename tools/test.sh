#!/usr/bin/env bash
# Set up everything the tests need, then run them: the Debian packages of
# tools/system-packages.txt (as root), a virtual environment with the project and its test
# tools.  Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/system.sh
install_system_packages
. tools/venv.sh
setup_venv '[test,progress,lint]'
exec "$venv/bin/python" -m pytest "$@"
