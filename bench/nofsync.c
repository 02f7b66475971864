/* LD_PRELOAD shim that turns fsync/fdatasync into no-ops. bench/mlmd_peer.py
 * uses it ONLY while bulk-preloading an MLMD SQLite file (otherwise 100k
 * executions take most of an hour at one fsync-bound commit each); every
 * measured workload runs without it, with SQLite's normal durable commits. */
int fsync(int fd) { (void)fd; return 0; }
int fdatasync(int fd) { (void)fd; return 0; }
