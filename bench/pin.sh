# Sourced by the bench scripts (bash).
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
