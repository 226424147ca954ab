#!/usr/bin/env python3
"""Kernel memory a held cgroup file costs (issue 15; README "Usage history and metrics").

    sudo python3 benches/held_file_kmem.py [FILE] [N]   (default: memory.stat of the caller's
                                                          own v1 memory cgroup, 5000)

Makes a v1 memory cgroup of its own below the caller's (`<own>/held-file-kmem-<pid>`), moves
itself into it, opens FILE N times, then reads each descriptor once, and prints the growth of
memory.kmem.usage_in_bytes per descriptor after the opens and after the reads: a seq_file
(every cgroup stat file) allocates its page-sized buffer at the first read and keeps it until
the file is closed, charged to the reader's cgroup. Moves itself back and removes the
directory at the end. cgroup v1 (or hybrid) memory hierarchy only: on pure v2 it says so and
exits 2 (there `memory.stat`'s `kernel` of the daemon's own cgroup, which
benches/daemon_cpu.sh prints, shows the same).
"""
import os
import sys

ROOT = "/sys/fs/cgroup/memory"
if not os.path.exists(f"{ROOT}/cgroup.procs"):
    print(f"no cgroup v1 memory hierarchy at {ROOT}: this measures v1 kmem accounting only")
    sys.exit(2)
own = next(l.split(":", 2)[2].strip() for l in open("/proc/self/cgroup") if ":memory:" in l)
parent = f"{ROOT}{own}"
target = sys.argv[1] if len(sys.argv) > 1 else f"{parent}/memory.stat"
n = int(sys.argv[2]) if len(sys.argv) > 2 else 5000
d = f"{parent}/held-file-kmem-{os.getpid()}"
os.mkdir(d)
try:
    with open(f"{d}/cgroup.procs", "w") as f:
        f.write(str(os.getpid()))
    kmem = lambda: int(open(f"{d}/memory.kmem.usage_in_bytes").read())
    base = kmem()
    fds = [os.open(target, os.O_RDONLY) for _ in range(n)]
    opened = kmem()
    for fd in fds:
        os.pread(fd, 4096, 0)
    read = kmem()
    for fd in fds:
        os.close(fd)
    print(f"{target}: {n} descriptors: {(opened - base) / n:.0f} B of kernel memory each once "
          f"opened, {(read - base) / n:.0f} B once read (memory.kmem.usage_in_bytes)")
finally:
    with open(f"{parent}/cgroup.procs", "w") as f:
        f.write(str(os.getpid()))
    os.rmdir(d)
