#!/usr/bin/env bash
# Set up everything the tests need, check the house rules, then run the tests: the Debian
# packages of tools/system-packages.txt (as root), a virtual environment with the project and its
# test and lint tools, ruff and mypy (tools/lint.sh), then pytest.  Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/system.sh
install_system_packages
./tools/lint.sh
. tools/venv.sh
setup_venv '[test,progress,lint]'
# The package's bytecode, which an installed package has (pip compiles it).  Without it, where
# PYTHONDONTWRITEBYTECODE is set, every sc a test starts parses the sources again: slower, and
# under a test's cap on memory the parser's failed allocations come out as bogus SyntaxErrors.
"$venv/bin/python" -m compileall -q src >/dev/null
exec "$venv/bin/python" -m pytest "$@"
