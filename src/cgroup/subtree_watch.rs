//! Tells the v1 readers when a directory is made below a tenant's: an inotify watch on every
//! directory of the walked subtrees (the VFS sends `IN_CREATE` for each `mkdir`, on cgroupfs
//! as anywhere), so a subtree is walked again when it changed instead of every `WALK_EVERY`
//! sweeps (issue 15: those walks were a fifth of the daemon's CPU at 1,000 idle tenants).
//!
//! A removed cgroup directory keeps its inotify watch (kernfs sends no `IN_IGNORED` on
//! `rmdir`, and the watch pins the inode), so watches are counted: each reader's `Watched`
//! gives its own back when it walks again or is dropped, and the last one out removes the
//! watch. Where inotify cannot be had (no instance left, `fs.inotify.max_user_watches`
//! reached), a reader falls back to walking every `WALK_EVERY` sweeps.

use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
use std::collections::{HashMap, HashSet};
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// One inotify instance for every reader of a sampler.
#[derive(Debug, Clone)]
pub struct SubtreeWatch {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug)]
struct Inner {
    fd: OwnedFd,
    /// Watch descriptor -> readers holding it (the same directory walked by a tenant and
    /// by its parent gives the same descriptor).
    refs: HashMap<i32, u32>,
}

/// What changed since the last `SubtreeWatch::changed`.
#[derive(Debug, PartialEq, Eq)]
pub enum Changes {
    /// A directory was made (or moved) below the watched directories of these descriptors.
    Below(HashSet<i32>),
    /// The kernel's event queue overflowed: anything may have changed.
    Anything,
}

/// The watches of one reader's last walk; given back when dropped.
#[derive(Debug)]
pub struct Watched {
    watch: SubtreeWatch,
    wds: Vec<i32>,
    /// Whether every directory of the walk got its watch (else the reader walks on a timer).
    complete: bool,
}

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    inner.lock().unwrap_or_else(PoisonError::into_inner)
}

impl SubtreeWatch {
    /// A new inotify instance (non-blocking, closed on exec).
    pub fn new() -> std::io::Result<SubtreeWatch> {
        let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)?;
        Ok(SubtreeWatch {
            inner: Arc::new(Mutex::new(Inner {
                fd,
                refs: HashMap::new(),
            })),
        })
    }

    /// An empty set of watches for one walk, to fill with `Watched::add`.
    pub fn start(&self) -> Watched {
        Watched {
            watch: self.clone(),
            wds: Vec::new(),
            complete: true,
        }
    }

    /// The watch descriptors held, for tests and the log.
    pub fn len(&self) -> usize {
        lock(&self.inner).refs.len()
    }

    /// Whether no directory is watched.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads every event queued since the last call. Returns which watched directories got
    /// a new directory, or `Anything` after an overflow or a failed read (walk every
    /// subtree again: that is always right, only slower).
    pub fn changed(&self) -> Changes {
        let mut inner = lock(&self.inner);
        let mut below = HashSet::new();
        let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
        let mut gone = Vec::new();
        let mut overflow = false;
        {
            let mut events = inotify::Reader::new(&inner.fd, &mut buf);
            loop {
                match events.next() {
                    Ok(e) => {
                        let m = e.events();
                        if m.contains(ReadFlags::QUEUE_OVERFLOW) {
                            overflow = true;
                        } else if m.contains(ReadFlags::IGNORED) {
                            gone.push(e.wd());
                        } else if m.contains(ReadFlags::ISDIR)
                            && m.intersects(ReadFlags::CREATE | ReadFlags::MOVED_TO)
                        {
                            below.insert(e.wd());
                        }
                    }
                    Err(rustix::io::Errno::AGAIN) => break,
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(e) => {
                        tracing::warn!("subtree watch: reading inotify events failed: {e}");
                        overflow = true;
                        break;
                    }
                }
            }
        }
        // The kernel dropped these (their filesystem went away): nothing to remove later.
        for wd in gone {
            inner.refs.remove(&wd);
        }
        if overflow {
            Changes::Anything
        } else {
            Changes::Below(below)
        }
    }
}

impl Watched {
    /// Watches `dir` for directories made in it. Returns false when the kernel refused (the
    /// directory is gone, or the watch limit is reached): the walk is then not complete.
    pub fn add(&mut self, dir: &Path) -> bool {
        let mut inner = lock(&self.watch.inner);
        let flags = WatchFlags::CREATE | WatchFlags::MOVED_TO | WatchFlags::ONLYDIR;
        match inotify::add_watch(&inner.fd, dir, flags) {
            Ok(wd) => {
                *inner.refs.entry(wd).or_insert(0) += 1;
                self.wds.push(wd);
                true
            }
            Err(e) => {
                if e == rustix::io::Errno::NOSPC {
                    tracing::debug!(
                        "subtree watch: fs.inotify.max_user_watches reached at {}: its tenant is walked every few sweeps",
                        dir.display()
                    );
                }
                self.complete = false;
                false
            }
        }
    }

    /// The instance these watches belong to.
    pub fn watch(&self) -> &SubtreeWatch {
        &self.watch
    }

    /// Whether every directory given to `add` is watched.
    pub fn complete(&self) -> bool {
        self.complete
    }

    /// Whether one of `wds` is among these watches.
    pub fn any_of(&self, wds: &HashSet<i32>) -> bool {
        self.wds.iter().any(|w| wds.contains(w))
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        let mut inner = lock(&self.watch.inner);
        for wd in self.wds.drain(..) {
            let last = match inner.refs.get_mut(&wd) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => true,
                // Dropped by the kernel already (`IGNORED`).
                None => false,
            };
            if last {
                inner.refs.remove(&wd);
                // EINVAL when the kernel removed it meanwhile: nothing left to do.
                let _ = inotify::remove_watch(&inner.fd, wd);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory made in a watched one is reported against its watch; a file is not; a
    /// watch shared by two walks stays until both are given back.
    #[test]
    fn a_new_directory_is_reported_and_shared_watches_are_counted() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        let w = SubtreeWatch::new().unwrap();
        let mut one = w.start();
        assert!(one.add(&a) && one.add(&b));
        let mut two = w.start();
        assert!(two.add(&a));
        assert_eq!(w.len(), 2, "a is watched once, by both");
        assert_eq!(w.changed(), Changes::Below(HashSet::new()));
        std::fs::write(a.join("file"), "x").unwrap();
        std::fs::create_dir(b.join("child")).unwrap();
        let Changes::Below(got) = w.changed() else {
            panic!("no overflow expected")
        };
        assert_eq!(got.len(), 1, "the directory, not the file: {got:?}");
        assert!(one.any_of(&got) && !two.any_of(&got));
        assert_eq!(w.changed(), Changes::Below(HashSet::new()), "drained");
        drop(one);
        assert_eq!(w.len(), 1, "b's watch removed, a's kept for the other walk");
        std::fs::create_dir(a.join("child")).unwrap();
        let Changes::Below(got) = w.changed() else {
            panic!("no overflow expected")
        };
        assert!(two.any_of(&got));
        drop(two);
        assert!(w.is_empty());
        std::fs::create_dir(b.join("again")).unwrap();
        assert_eq!(
            w.changed(),
            Changes::Below(HashSet::new()),
            "nothing watched"
        );
    }

    /// A directory that does not exist cannot be watched: the walk says it is incomplete.
    #[test]
    fn a_missing_directory_leaves_the_walk_incomplete() {
        let tmp = tempfile::tempdir().unwrap();
        let w = SubtreeWatch::new().unwrap();
        let mut one = w.start();
        assert!(one.complete());
        assert!(!one.add(&tmp.path().join("nope")));
        assert!(!one.complete());
        assert!(!one.any_of(&HashSet::new()));
        assert!(w.is_empty());
    }
}
