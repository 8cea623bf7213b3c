//! A test-only FUSE filesystem that models a disk with a volatile write cache, in the spirit
//! of Jepsen's LazyFS.
//!
//! [`FaultFs::mount`] mounts, over an (empty) mountpoint, a pass-through view of a backing
//! directory. Reads and writes reach the backing files at once, but the filesystem remembers
//! what is not durable yet and [`FaultFs::power_cut`] takes it back:
//!
//! - file data (write, truncate, fallocate) is durable after an fsync or fdatasync of that
//!   file (any handle). Before each modification the bytes about to be overwritten and the
//!   old size go into the file's undo log; fsync clears it; a power cut replays it backwards.
//! - names (create, mknod, mkdir, symlink, unlink, rmdir, rename) are durable after an
//!   fsyncdir of the directory they changed (both directories for a rename across
//!   directories). Until then unlinked files and replaced rename targets wait in a hidden
//!   stash directory inside the backing directory; a power cut undoes the pending operations
//!   newest first (a create is removed even if its data was fsync'd).
//!
//! A [`Control`] injects the other faults: fsyncs failing with EIO, and writes failing with
//! ENOSPC past a byte budget.
//!
//! Needs root and `/dev/fuse` (it calls mount(2) directly; libfuse is not used).

use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use fuser::{BackgroundSession, Config, Session, SessionACL};
use tracing::debug;

mod fuse;
mod model;

use crate::fuse::{FaultFsImpl, Shared};
use crate::model::State;

/// How long an unmount waits for a busy mount (processes just killed) to become free.
const UNMOUNT_PATIENCE: Duration = Duration::from_secs(5);

/// A mounted fault filesystem.
pub struct FaultFs {
    shared: Arc<Shared>,
    mountpoint: PathBuf,
    session: Option<BackgroundSession>,
}

impl FaultFs {
    /// Mounts at `mountpoint` (must exist, empty dir) a filesystem over `backing` (created
    /// if missing; its existing content counts as durable).
    pub fn mount(backing: &Path, mountpoint: &Path) -> io::Result<FaultFs> {
        fs::create_dir_all(backing)?;
        let backing = backing.canonicalize()?;
        let mountpoint = mountpoint.canonicalize()?;
        if !fs::metadata(&mountpoint)?.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("mountpoint {} is not a directory", mountpoint.display()),
            ));
        }
        if backing.starts_with(&mountpoint) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the backing directory must not be inside the mountpoint",
            ));
        }
        sweep_orphans();
        let shared = Arc::new(Shared::new(State::new(backing)?));
        let session = start(&shared, &mountpoint)?;
        Ok(FaultFs {
            shared,
            mountpoint,
            session: Some(session),
        })
    }

    /// A handle to inject faults while mounted.
    pub fn control(&self) -> Control {
        Control {
            shared: self.shared.clone(),
        }
    }

    /// Power cut: unmounts (every process using the mount must already be dead — the
    /// caller kill -9s them first), reverts the backing directory to its durable state, and
    /// mounts again at the same place. Fault settings (budget) survive; pending EIO count
    /// is reset.
    pub fn power_cut(&mut self) -> io::Result<PowerCut> {
        self.stop()?;
        let cut = {
            let mut st = self.shared.lock();
            let cut = st.power_cut();
            self.shared.publish(&st);
            cut
        };
        self.shared.fail_fsyncs.store(0, Ordering::SeqCst);
        debug!(?cut, "faultfs: power cut");
        self.session = Some(start(&self.shared, &self.mountpoint)?);
        Ok(cut)
    }

    /// Unmounts (also done on Drop; Drop must not panic).
    ///
    /// A clean unmount makes everything durable: the backing directory keeps what was
    /// visible.
    pub fn unmount(mut self) -> io::Result<()> {
        self.stop()?;
        self.shared.lock().commit_all();
        Ok(())
    }

    /// Unmounts and waits for the session thread; a no-op when not mounted.
    fn stop(&mut self) -> io::Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        if let Err(e) = umount(&self.mountpoint, UNMOUNT_PATIENCE) {
            // EINVAL: not a mountpoint any more; fine if someone else unmounted us already.
            let gone = e.raw_os_error() == Some(libc::EINVAL) && session.guard.is_finished();
            if !gone {
                self.session = Some(session);
                return Err(e);
            }
        }
        if let Err(e) = session.join() {
            debug!(%e, "faultfs: session ended with an error");
        }
        Ok(())
    }
}

impl Drop for FaultFs {
    fn drop(&mut self) {
        if self.session.is_none() {
            return;
        }
        match self.stop() {
            Ok(()) => self.shared.lock().commit_all(),
            Err(e) => {
                // Still busy: detach lazily and leave the session thread to finish on its own.
                debug!(%e, "faultfs: unmount on drop failed, detaching");
                if let Ok(c) = CString::new(self.mountpoint.as_os_str().as_bytes()) {
                    // SAFETY: valid NUL-terminated path.
                    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
                }
                drop(self.session.take());
            }
        }
    }
}

/// Fault injection handle; Clone + Send + Sync.
#[derive(Clone)]
pub struct Control {
    shared: Arc<Shared>,
}

impl Control {
    /// The next `n` fsync / fdatasync / fsyncdir calls fail with EIO (the data they would
    /// have made durable stays not durable).
    pub fn fail_fsyncs(&self, n: u32) {
        self.shared.fail_fsyncs.store(n, Ordering::SeqCst);
    }

    /// Writes (and truncates/fallocates) that would make the total size of all files exceed
    /// `bytes` fail with ENOSPC; statfs reports the budget as the disk size and budget minus
    /// used as free space. None: unlimited, statfs passes through the backing filesystem's.
    pub fn set_budget(&self, bytes: Option<u64>) {
        self.shared.set_budget(bytes);
    }

    /// Total size of all files now (what the budget is compared to).
    pub fn used_bytes(&self) -> u64 {
        self.shared.used.load(Ordering::SeqCst)
    }

    /// Bytes written that are not durable yet.
    pub fn unsynced_bytes(&self) -> u64 {
        self.shared.unsynced.load(Ordering::SeqCst)
    }

    /// fsyncs that failed by injection so far.
    pub fn failed_fsyncs(&self) -> u64 {
        self.shared.failed_fsyncs.load(Ordering::SeqCst)
    }
}

/// What a power cut discarded.
#[derive(Debug, Clone, Default)]
pub struct PowerCut {
    /// Files whose data was reverted to its last fsync'd state.
    pub files_reverted: u64,
    /// Bytes written (since the last fsync of their file) that were discarded.
    pub bytes_discarded: u64,
    /// Name operations (create, unlink, rename, ...) that were undone.
    pub names_reverted: u64,
    /// The undone name operations, newest first (`create a/b`, `unlink a/c`, ...), for a
    /// fault log.
    pub names: Vec<String>,
}

/// Mounts a fresh FUSE connection at `mountpoint` serving `shared`.
///
/// mount(2) is called here rather than through fuser's `Mount`: fuser's unmount-on-drop
/// would otherwise run after our own unmount and could hit a later mount at the same path.
fn start(shared: &Arc<Shared>, mountpoint: &Path) -> io::Result<BackgroundSession> {
    let dev = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/fuse")
        .map_err(|e| io::Error::new(e.kind(), format!("opening /dev/fuse: {e}")))?;
    let root_mode = fs::metadata(mountpoint)?.mode() & libc::S_IFMT;
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let options = format!(
        "fd={},rootmode={root_mode:o},user_id={uid},group_id={gid},allow_other,default_permissions",
        dev.as_raw_fd()
    );
    let source = CString::new(format!("{SOURCE_PREFIX}{}", std::process::id()))?;
    let fstype = c"fuse";
    let target = CString::new(mountpoint.as_os_str().as_bytes())?;
    let data = CString::new(options)?;
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!(
                "mount(2) of FUSE at {} failed (needs root and /dev/fuse): {e}",
                mountpoint.display()
            ),
        ));
    }
    let fs = FaultFsImpl {
        shared: shared.clone(),
    };
    let session = Session::from_fd(fs, OwnedFd::from(dev), SessionACL::All, Config::default())
        .and_then(Session::spawn);
    match session {
        Ok(session) => Ok(session),
        Err(e) => {
            // SAFETY: valid NUL-terminated path.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
            Err(e)
        }
    }
}

/// What a fault filesystem's mount source starts with; the id of the process serving it
/// follows, so that a later mount can tell an orphan ([`sweep_orphans`]).
const SOURCE_PREFIX: &str = "faultfs:";

/// Detaches every fault filesystem whose serving process has died, and returns their
/// mountpoints. Such a mount (left by a test process killed mid-run, with the nextest run
/// that ran it, say) answers every call with ENOTCONN and keeps its directory from being
/// removed. Mounts of live processes, other tests' running beside this one included, are left
/// alone. Called by [`FaultFs::mount`]; a failure to read the mount table sweeps nothing.
pub fn sweep_orphans() -> Vec<PathBuf> {
    let Ok(table) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut swept = Vec::new();
    for (mountpoint, pid) in faultfs_mounts(&table) {
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let Ok(target) = CString::new(mountpoint.as_os_str().as_bytes()) else {
            continue;
        };
        // SAFETY: valid NUL-terminated path. MNT_DETACH: a dead session's mount cannot be
        // busy with anything that needs it, and another sweeper may have got there first.
        if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } == 0 {
            debug!(mountpoint = %mountpoint.display(), pid, "faultfs: detached an orphaned mount");
            swept.push(mountpoint);
        }
    }
    swept
}

/// The fault filesystems in a `/proc/<pid>/mountinfo` table: mountpoint and serving process.
fn faultfs_mounts(table: &str) -> Vec<(PathBuf, u32)> {
    table
        .lines()
        .filter_map(|line| {
            let (mount, fs) = line.split_once(" - ")?;
            let mut fs = fs.split(' ');
            if fs.next()? != "fuse" {
                return None;
            }
            let pid = fs.next()?.strip_prefix(SOURCE_PREFIX)?.parse().ok()?;
            let mountpoint = mount.split(' ').nth(4)?;
            Some((PathBuf::from(unescape_mountinfo(mountpoint)), pid))
        })
        .collect()
}

/// A mountinfo path field, whose space, tab, newline and backslash are written as octal
/// escapes (`\040`).
fn unescape_mountinfo(field: &str) -> std::ffi::OsString {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).and_then(|d| {
            d.iter()
                .all(|c| (b'0'..=b'7').contains(c))
                .then(|| d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0')))
        });
        match octal {
            Some(v) if b[i] == b'\\' && v <= 0xff => {
                out.push(v as u8);
                i += 4;
            }
            _ => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    std::ffi::OsString::from_vec(out)
}

/// umount(2), retrying while the mount is busy for up to `patience`.
fn umount(mountpoint: &Path, patience: Duration) -> io::Result<()> {
    let target = CString::new(mountpoint.as_os_str().as_bytes())?;
    let started = Instant::now();
    loop {
        // SAFETY: valid NUL-terminated path.
        if unsafe { libc::umount2(target.as_ptr(), 0) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => {}
            Some(libc::EBUSY) if started.elapsed() < patience => {
                thread::sleep(Duration::from_millis(10));
            }
            _ => {
                debug!(mountpoint = %mountpoint.display(), %e, "faultfs: unmount failed");
                return Err(e);
            }
        }
    }
}
