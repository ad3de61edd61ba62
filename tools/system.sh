# Sourced by tools/test.sh: `install_system_packages` installs the Debian packages listed in
# tools/system-packages.txt that are missing, with apt-get, when running as root; otherwise it
# says which are missing (the tests that need them skip, saying why).
install_system_packages() {
    local wanted missing=()
    wanted=$(sed -e 's/#.*//' tools/system-packages.txt | awk 'NF {print $1}')
    for package in $wanted; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
        echo "tools/test.sh: installing ${missing[*]}" >&2
        if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >/dev/null; then
            echo "tools/test.sh: could not install ${missing[*]}; the tests that need them will skip" >&2
        fi
    else
        echo "tools/test.sh: not root (or no apt-get): ${missing[*]} missing; the tests that need them will skip" >&2
    fi
}
