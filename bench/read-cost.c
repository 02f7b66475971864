// What one read of a hits-file record costs on this machine, by way of
// reading it: the floor of a 1M lookup that the memory tier does not answer
// (docs/benchmarks-archive.md, "Huge folios for the hits file").
//
//   cc -O2 -o /tmp/read-cost bench/read-cost.c
//   /tmp/read-cost /tmp/bm/sc1000000/hits.log [reads]
//
// Reads of 680 bytes (a benchmark record) at uniformly random offsets of
// FILE, which should be in the page cache (read it once first), each into a
// fresh buffer as the server does:
//   syscall     an empty system call (getppid): the entry and exit alone
//   pread-hot   pread of one offset again and again: a read with no cache miss
//   preadv2-hot the same with RWF_NOWAIT, as the server reads
//   preadv2     random offsets, RWF_NOWAIT, opened without O_NOATIME
//   noatime     the same, opened O_NOATIME as the server opens it
//   mmap        memcpy from a read-only mapping of the whole file, every page
//               touched first: no system call, but the file's pages count in
//               the process's RSS
// "refused" counts RWF_NOWAIT reads the kernel turned away.
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define LEN 680

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

static unsigned long long rng = 88172645463325252ULL;
static unsigned long long next(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return rng;
}

static void report(const char *what, double t0, long n, long refused) {
  printf("%-12s %6.0f ns per read", what, (now() - t0) / n * 1e9);
  if (refused >= 0) printf("  (refused %ld)", refused);
  printf("\n");
}

// Random reads with preadv2(RWF_NOWAIT) on a file opened with `flags`.
static void random_reads(const char *what, const char *path, int flags, long n, size_t size) {
  int fd = open(path, O_RDONLY | flags);
  if (fd < 0) { perror(path); exit(1); }
  long refused = 0;
  unsigned sink = 0;
  double t0 = now();
  for (long i = 0; i < n; i++) {
    char *b = malloc(LEN);
    struct iovec v = {b, LEN};
    if (preadv2(fd, &v, 1, next() % (size - LEN), RWF_NOWAIT) != LEN) refused++;
    sink += (unsigned char)b[LEN / 2];
    free(b);
  }
  report(what, t0, n, refused);
  close(fd);
  if (sink == 1) printf("\n");
}

int main(int argc, char **argv) {
  if (argc < 2) { fprintf(stderr, "usage: %s FILE [reads]\n", argv[0]); return 2; }
  long n = argc > 2 ? atol(argv[2]) : 2000000;
  int fd = open(argv[1], O_RDONLY | O_NOATIME);
  if (fd < 0) { perror(argv[1]); return 1; }
  struct stat st;
  fstat(fd, &st);
  size_t size = st.st_size;
  if (size < 2 * LEN) { fprintf(stderr, "%s: too small\n", argv[1]); return 1; }
  char b[LEN];
  double t0 = now();
  for (long i = 0; i < n; i++) syscall(SYS_getppid);
  report("syscall", t0, n, -1);
  t0 = now();
  for (long i = 0; i < n; i++) if (pread(fd, b, LEN, 1000) != LEN) return 1;
  report("pread-hot", t0, n, -1);
  t0 = now();
  for (long i = 0; i < n; i++) {
    struct iovec v = {b, LEN};
    if (preadv2(fd, &v, 1, 1000, RWF_NOWAIT) != LEN) return 1;
  }
  report("preadv2-hot", t0, n, -1);
  random_reads("preadv2", argv[1], 0, n, size);
  random_reads("noatime", argv[1], O_NOATIME, n, size);
  char *m = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
  if (m == MAP_FAILED) { perror("mmap"); return 1; }
  unsigned sink = 0;
  for (size_t i = 0; i < size; i += 4096) sink += (unsigned char)m[i];
  t0 = now();
  for (long i = 0; i < n; i++) {
    char *c = malloc(LEN);
    memcpy(c, m + next() % (size - LEN), LEN);
    sink += (unsigned char)c[LEN / 2];
    free(c);
  }
  report("mmap", t0, n, -1);
  return sink == 1;
}
