#!/usr/bin/env bash
# Set up a virtual environment (if needed) with the project and its test tools, then run the tests.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/venv.sh
setup_venv '[test,progress]'
# The reference tools that tests/test_reference_tools.py compares with (it skips, saying why, when
# one is missing): installed from the distribution when we may.
missing=()
for tool in zip unzip xz zstd; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    packages=("${missing[@]/#xz/xz-utils}")
    apt-get install -y -q "${packages[@]}" >/dev/null 2>&1 ||
        { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q "${packages[@]}" >/dev/null 2>&1; } ||
        echo "tools/test.sh: could not install ${packages[*]}; the tests that need them are skipped" >&2
fi
exec "$venv/bin/python" -m pytest "$@"
