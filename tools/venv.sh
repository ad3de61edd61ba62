# Sourced by the tools: `setup_venv EXTRAS` makes sure $venv (default .venv, or $SC_VENV) exists
# and holds the project installed with EXTRAS, e.g. '[test,progress]'.  Run from the project root.
venv=${SC_VENV:-.venv}

setup_venv() {
    if [ ! -x "$venv/bin/python" ]; then
        python3 -m venv "$venv"
    fi
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e ".$1"
}
