// The bare `pread` reader of issue 15: the floor the daemon's sampling is compared with.
//
//   bare_reader ROOT SECONDS [INTERVAL_MS]
//
// Opens, once, the 11 stat files the sampler reads of every tenant directory directly below
// ROOT (cgroup v2 names; a directory whose name starts with '_' is the daemon's own, skipped;
// a file a cgroup does not have is skipped), then every INTERVAL_MS (default 1000) re-reads
// every file with one pread into one buffer, with no parsing, for SECONDS. It prints the
// number of tenants and files, how many files it could keep open (the rest are opened, read
// and closed each time, as the daemon does past its descriptor budget; like the daemon it first
// raises its soft open-file limit to the hard one) and its own user+system
// CPU over the reading loop as a share of one core (getrusage), the figure
// benches/daemon_cpu.sh --bare divides the daemon's by. Nothing is written anywhere.
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static const char *FILES[] = {
    "cpu.stat",       "cpu.pressure", "memory.current", "memory.peak",
    "memory.stat",    "memory.events", "memory.pressure", "io.stat",
    "io.pressure",    "pids.current", "pids.events",
};
#define NFILES (sizeof FILES / sizeof FILES[0])

struct file {
  char *path;
  int fd;  // -1: opened on each read
};

static double cpu_s(void) {
  struct rusage r;
  getrusage(RUSAGE_SELF, &r);
  return r.ru_utime.tv_sec + r.ru_utime.tv_usec / 1e6 + r.ru_stime.tv_sec +
         r.ru_stime.tv_usec / 1e6;
}

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s ROOT SECONDS [INTERVAL_MS]\n", argv[0]);
    return 2;
  }
  // As `tenantd serve` does: the soft open-file limit raised to the hard one.
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  const char *root = argv[1];
  double seconds = atof(argv[2]);
  long interval_ms = argc > 3 ? atol(argv[3]) : 1000;
  DIR *d = opendir(root);
  if (!d) {
    fprintf(stderr, "bare_reader: cannot open %s: %s\n", root, strerror(errno));
    return 1;
  }
  size_t cap = 1024, n = 0, tenants = 0, held = 0;
  struct file *files = malloc(cap * sizeof *files);
  struct dirent *e;
  while ((e = readdir(d))) {
    if (e->d_type != DT_DIR || e->d_name[0] == '.' || e->d_name[0] == '_') continue;
    tenants++;
    for (size_t i = 0; i < NFILES; i++) {
      char *p;
      if (asprintf(&p, "%s/%s/%s", root, e->d_name, FILES[i]) < 0) return 1;
      if (access(p, R_OK) != 0) {
        free(p);
        continue;
      }
      if (n == cap) files = realloc(files, (cap *= 2) * sizeof *files);
      int fd = open(p, O_RDONLY | O_CLOEXEC);
      files[n].path = p;
      files[n].fd = fd;
      if (fd >= 0) held++;
      n++;
    }
  }
  closedir(d);
  if (tenants == 0) {
    fprintf(stderr, "bare_reader: no tenant directory below %s\n", root);
    return 1;
  }
  static char buf[65536];
  size_t bytes = 0, sweeps = 0;
  double c0 = cpu_s(), w0 = now_s(), next = w0;
  while (now_s() - w0 < seconds) {
    for (size_t i = 0; i < n; i++) {
      ssize_t r;
      if (files[i].fd >= 0) {
        r = pread(files[i].fd, buf, sizeof buf, 0);
      } else {
        int fd = open(files[i].path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) continue;
        r = read(fd, buf, sizeof buf);
        close(fd);
      }
      if (r > 0) bytes += (size_t)r;
    }
    sweeps++;
    next += interval_ms / 1000.0;
    double wait = next - now_s();
    if (wait > 0) usleep((useconds_t)(wait * 1e6));
  }
  double cpu = cpu_s() - c0, wall = now_s() - w0;
  printf("bare pread reader: %zu tenants, %zu files (%zu held open), %zu sweeps in %.0f s, "
         "%.0f bytes a sweep: CPU %.2f%% of one core (%.2f ms a sweep)\n",
         tenants, n, held, sweeps, wall, (double)bytes / sweeps, cpu / wall * 100,
         cpu / sweeps * 1000);
  return 0;
}
