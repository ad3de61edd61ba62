# Sourced by the tools: `setup_venv EXTRAS` makes sure $venv (default .venv, or $SC_VENV) exists
# and holds the project installed with EXTRAS, e.g. '[test,progress]'.  Run from the project root.
#
# The install is editable, so changes to the sources need no reinstall; it is redone only when
# pyproject.toml or the scripts of bin/ (which are copied) change (a stamp in the venv per set of
# extras records what was installed), which saves the seconds pip takes to find that nothing changed.
# $SC_PYTHON names the interpreter a new venv is made with (default python3).
venv=${SC_VENV:-.venv}

setup_venv() {
    if [ ! -x "$venv/bin/python" ]; then
        "${SC_PYTHON:-python3}" -m venv "$venv"
    fi
    local stamp="$venv/.installed${1//[^a-z,]/}" wanted
    wanted="$(cat pyproject.toml bin/* | cksum) $(pwd)"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e ".$1"
        printf '%s' "$wanted" > "$stamp"
    fi
}
