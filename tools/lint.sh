#!/usr/bin/env bash
# The house rules that tools check (see CONTRIBUTING.md): ruff (lint) and mypy (types, strict).
# Sets up .venv like tools/test.sh; exits non-zero on any finding.
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/venv.sh
setup_venv '[test,progress,lint]'
"$venv/bin/ruff" check src tests benchmarks
"$venv/bin/mypy"
