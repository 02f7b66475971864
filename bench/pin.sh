# Sourced by the bench scripts (bash): holding data dirs in the page cache,
# reading what a data dir's preload holds, and picking a free port.
#
# pin LOG FILE...: holds the FILEs in the page cache (bench/pin-pages.py) and
# returns once they are resident, leaving the pinner running as $pinner; fails
# if it dies or has not finished after PIN_TRIES half-seconds (default 600).
pin() {
  local log=$1
  shift
  python3 bench/pin-pages.py "$@" >"$log" 2>&1 &
  pinner=$!
  for _ in $(seq "${PIN_TRIES:-600}"); do
    grep -q pinned "$log" && return 0
    kill -0 "$pinner" 2>/dev/null || { cat "$log"; return 1; }
    sleep 0.5
  done
  return 1
}

# pin_dirs LOG DIR...: pin as above the data file of each DIR and its hits
# file when it has one.
pin_dirs() {
  local log=$1 d files=()
  shift
  for d in "$@"; do
    files+=("$d/db")
    [ -e "$d/hits.log" ] && files+=("$d/hits.log")
  done
  pin "$log" "${files[@]}"
}

# stored DIR: the executions its stepcache-bench preload holds.
stored() {
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["executions"])' \
    "$1/stepcache-bench.json"
}

# free_port: a loopback TCP port free when asked (for a server's listen or
# metrics address).
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
