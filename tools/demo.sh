#!/usr/bin/env bash
# The main job on a self-contained example: a local origin serves a tarball on 127.0.0.1, four
# jobs ask for it at once with `sc --use`, one download serves them all, and the last
# `sc --unuse` deletes it.  Sets up the virtual environment first if needed.
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/venv.sh
setup_venv '[progress]'
export PATH="$(cd "$venv/bin" && pwd):$PATH"  # $venv may be relative ($SC_VENV too) or absolute

work=$(mktemp -d)
origin_pid=
cleanup() {
    if [ -n "$origin_pid" ]; then kill "$origin_pid" 2>/dev/null || true; wait "$origin_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

# The origin runs as its own process; $! is its pid (no subshell in between).
python tests/origin.py --dir examples --port 0 --rate 400000 >"$work/port" &
origin_pid=$!
for _ in $(seq 100); do [ -s "$work/port" ] && break; sleep 0.1; done
port=$(cat "$work/port")
url=http://127.0.0.1:$port/vsg-0.2.0.tar.gz
md5=$(md5sum examples/vsg-0.2.0.tar.gz | cut -d' ' -f1)
# Its own mode: under umask 000 it would be writable by every user, a base that sc refuses.
mkdir -m 0755 "$work/base"

# As in the seed's example; -d keeps the demo out of the real /tmp.
repo_args="--name=test-repo --size=10MB -d $work/base http:$url md5:$md5 tar"
echo "repo_args: $repo_args"

job() {
    local path
    path=$(sc --use $repo_args)
    echo "job $1: $path holds: $(ls "$path"/vsg-0.2.0 | tr '\n' ' ') -> $("$path"/vsg-0.2.0/bin/vsg)"
    touch "$work/holding.$1"
    for _ in $(seq 100); do [ -e "$work/listed" ] && break; sleep 0.1; done
    sc --unuse $repo_args
}
pids=()
for n in 1 2 3 4; do job "$n" & pids+=($!); done
for _ in $(seq 300); do [ "$(ls "$work" | grep -c '^holding')" = 4 ] && break; sleep 0.1; done
echo "--- sc list, while the four jobs hold their uses:"
sc list -d "$work/base"
touch "$work/listed"
wait "${pids[@]}"

gets=$(python -c 'import json, sys, urllib.request
stats = json.load(urllib.request.urlopen(sys.argv[1]))
print(stats["/vsg-0.2.0.tar.gz"]["gets"])' "http://127.0.0.1:$port/__origin__/stats")
echo "--- the origin served $gets download(s) for 4 jobs"
# The path is <base>/.shared-cache-<uid>/test-repo; --location exits 1 once it is gone.
if sc --location $repo_args >/dev/null; then echo "the repository is still there: unexpected" >&2; exit 1; fi
echo "--- the last sc --unuse deleted the repository"
[ "$gets" = 1 ]
