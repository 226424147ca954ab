// The generator of benches/placement.sh (compiled by it with `cc -O2`): starts RATE short-lived
// processes a second for SECONDS, each a `sleep LIFE` exec'd through posix_spawn (vfork + exec:
// the call returns once the new program is in place), and polls every child's
// /proc/PID/cgroup until the child is in its tenant's cgroup in every v1 hierarchy of the
// bench (NLINES lines naming `/<ROOT>/t<K>` or a directory below it), or until it exits.
//
//   placement_gen RATE SECONDS LIFE TARGETS PREFIX EXE_DIR N_EXE ROOT NLINES OUT
//
// Child i goes to tenant t<K>, K = i % TARGETS + 1. For K <= N_EXE it is EXE_DIR/e<K>/sleep
// (a copy of sleep that only this bench runs; the tenant's rule is an exe glob) with argv[0]
// "sleep"; otherwise /bin/sleep with argv[0] "<PREFIX>-t<K>" (the tenant's rule is the regex
// `^<PREFIX>-t<K>\x00` over the NUL-joined argv). OUT gets one line per child:
//   K spawn_to_placed_us exec_to_placed_us placed(0/1)
// where spawn is the CLOCK_MONOTONIC time before posix_spawn, exec the time it returned (the
// child has exec'd by then), placed the first poll that saw the child in its tenant (-1 if
// none did before it exited); placed is 1, 0 (never seen placed) or 2 (first seen placed as a
// zombie: moved after it exited, not counted as placed). The polling loop sleeps POLL_US (default 50) between sweeps
// and only polls children not yet placed. Nothing but its own children is read or signalled.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

struct child {
  pid_t pid;
  int k;
  long long t_spawn, t_exec, t_placed;
  int fd;  // /proc/PID/cgroup, open while unplaced
};

static long long now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

// Whether the text of /proc/PID/cgroup has NLINES lines naming `/<root>/t<k>` or a directory
// below it (the tenant's leaf, `_procs` on v1).
static int placed(const char *buf, const char *root, int k, int nlines) {
  char needle[512];
  int len = snprintf(needle, sizeof needle, "/%s/t%d", root, k), n = 0;
  for (const char *p = buf; (p = strstr(p, needle)); p += len)
    if (p[len] == '\n' || p[len] == '/') n++;
  return n >= nlines;
}

int main(int argc, char **argv) {
  if (argc != 11) {
    fprintf(stderr, "usage: %s RATE SECONDS LIFE TARGETS PREFIX EXE_DIR N_EXE ROOT NLINES OUT\n",
            argv[0]);
    return 2;
  }
  double rate = atof(argv[1]), seconds = atof(argv[2]);
  const char *life = argv[3];
  int targets = atoi(argv[4]);
  const char *prefix = argv[5], *exe_dir = argv[6];
  int n_exe = atoi(argv[7]);
  const char *root = argv[8];
  int nlines = atoi(argv[9]);
  FILE *out = fopen(argv[10], "w");
  if (!out || rate <= 0 || seconds <= 0 || targets < 1) {
    fprintf(stderr, "placement_gen: bad arguments or cannot open %s\n", argv[10]);
    return 2;
  }
  long poll_us = getenv("POLL_US") ? atol(getenv("POLL_US")) : 50;
  long total = (long)(rate * seconds);
  struct child *c = calloc(total, sizeof *c);
  long started = 0, reaped = 0, failed = 0;
  long long period = (long long)(1e9 / rate), t0 = now_ns();
  char path[512], a0[256], buf[4096];
  while (reaped < started || started < total) {
    long long t = now_ns();
    // Start the next child if it is due (one per sweep: when the generator falls behind, it
    // keeps polling between spawns instead of catching up in a burst).
    if (started < total && t >= t0 + started * period) {
      struct child *ch = &c[started];
      ch->k = (int)(started % targets) + 1;
      ch->t_placed = -1;
      ch->fd = -1;
      const char *exe = "/bin/sleep";
      if (ch->k <= n_exe) {
        snprintf(path, sizeof path, "%s/e%d/sleep", exe_dir, ch->k);
        exe = path;
        snprintf(a0, sizeof a0, "sleep");
      } else {
        snprintf(a0, sizeof a0, "%s-t%d", prefix, ch->k);
      }
      char *args[] = {a0, (char *)life, NULL};
      ch->t_spawn = now_ns();
      int e = posix_spawn(&ch->pid, exe, NULL, NULL, args, environ);
      ch->t_exec = now_ns();
      started++;
      if (e) {
        fprintf(stderr, "placement_gen: posix_spawn %s: %s\n", exe, strerror(e));
        ch->pid = 0;
        failed++;
      } else {
        char f[64];
        snprintf(f, sizeof f, "/proc/%d/cgroup", ch->pid);
        ch->fd = open(f, O_RDONLY | O_CLOEXEC);
      }
    }
    // Poll the children not yet placed, and reap those that exited.
    for (long i = reaped; i < started; i++) {
      struct child *ch = &c[i];
      if (ch->fd >= 0) {
        ssize_t n = pread(ch->fd, buf, sizeof buf - 1, 0);
        if (n > 0) {
          buf[n] = 0;
          if (placed(buf, root, ch->k, nlines)) {
            ch->t_placed = now_ns();
            // A zombie (exited, not yet reaped) does not count as placed before its exit.
            char f[64], st[512];
            snprintf(f, sizeof f, "/proc/%d/stat", ch->pid);
            int sfd = open(f, O_RDONLY | O_CLOEXEC);
            ssize_t m = sfd >= 0 ? read(sfd, st, sizeof st - 1) : -1;
            if (sfd >= 0) close(sfd);
            if (m > 0) {
              st[m] = 0;
              char *r = strrchr(st, ')');
              if (r && r[1] == ' ' && (r[2] == 'Z' || r[2] == 'X')) ch->t_placed = -2;
            }
            close(ch->fd);
            ch->fd = -1;
          }
        }
      }
    }
    for (;;) {
      int st;
      pid_t p = waitpid(-1, &st, WNOHANG);
      if (p <= 0) break;
      for (long i = reaped; i < started; i++)
        if (c[i].pid == p) {
          if (c[i].fd >= 0) close(c[i].fd), c[i].fd = -1;
          c[i].pid = -c[i].pid;
          break;
        }
    }
    // Advance `reaped` over the finished prefix.
    while (reaped < started && c[reaped].pid <= 0) reaped++;
    if (started < total && now_ns() >= t0 + started * period) continue;  // behind: no sleep
    struct timespec ts = {0, poll_us * 1000};
    nanosleep(&ts, NULL);
  }
  for (long i = 0; i < started; i++) {
    struct child *ch = &c[i];
    if (ch->pid == 0) continue;
    fprintf(out, "%d %lld %lld %d\n", ch->k,
            ch->t_placed < 0 ? -1 : (ch->t_placed - ch->t_spawn) / 1000,
            ch->t_placed < 0 ? -1 : (ch->t_placed - ch->t_exec) / 1000,
            ch->t_placed >= 0 ? 1 : ch->t_placed == -2 ? 2 : 0);
  }
  fclose(out);
  fprintf(stderr, "placement_gen: %ld started, %ld failed to start, in %.2f s\n", started, failed,
          (now_ns() - t0) / 1e9);
  return failed ? 1 : 0;
}
