//! The FUSE glue: every callback locks the model, runs one operation and replies.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    BsdFileFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use tracing::debug;

use crate::model::{State, system_time};

/// How long the kernel may cache entries and attributes. Only this filesystem changes the
/// backing directory while mounted, and a power cut remounts (a fresh superblock), so a
/// short cache is safe.
const TTL: Duration = Duration::from_secs(1);
/// Block size reported by statfs when a budget is set.
const BSIZE: u64 = 4096;

/// State shared by the FUSE session, the [`crate::FaultFs`] owner and [`crate::Control`]s.
pub(crate) struct Shared {
    state: Mutex<State>,
    budget: Mutex<Option<u64>>,
    pub(crate) fail_fsyncs: AtomicU32,
    pub(crate) failed_fsyncs: AtomicU64,
    pub(crate) used: AtomicU64,
    pub(crate) unsynced: AtomicU64,
}

impl Shared {
    pub(crate) fn new(state: State) -> Shared {
        let shared = Shared {
            state: Mutex::new(state),
            budget: Mutex::new(None),
            fail_fsyncs: AtomicU32::new(0),
            failed_fsyncs: AtomicU64::new(0),
            used: AtomicU64::new(0),
            unsynced: AtomicU64::new(0),
        };
        shared.publish(&shared.lock());
        shared
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn budget(&self) -> Option<u64> {
        *self.budget.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn set_budget(&self, bytes: Option<u64>) {
        *self.budget.lock().unwrap_or_else(|e| e.into_inner()) = bytes;
    }

    /// Copies the counters of `st` where [`crate::Control`] reads them.
    pub(crate) fn publish(&self, st: &State) {
        self.used.store(st.used, Ordering::SeqCst);
        self.unsynced.store(st.unsynced, Ordering::SeqCst);
    }

    /// Consumes one injected fsync failure, if any is pending.
    fn inject_fsync_failure(&self, what: &str, ino: INodeNo) -> bool {
        let hit = self
            .fail_fsyncs
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if hit {
            self.failed_fsyncs.fetch_add(1, Ordering::SeqCst);
            debug!(what, ino = ino.0, "faultfs: injected EIO");
        }
        hit
    }
}

/// The [`Filesystem`] handed to fuser.
pub(crate) struct FaultFsImpl {
    pub(crate) shared: std::sync::Arc<Shared>,
}

fn err(e: &io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

fn attr(ino: u64, md: &std::fs::Metadata) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: md.size(),
        blocks: md.blocks(),
        atime: system_time(md.atime(), md.atime_nsec()),
        mtime: system_time(md.mtime(), md.mtime_nsec()),
        ctime: system_time(md.ctime(), md.ctime_nsec()),
        crtime: UNIX_EPOCH,
        kind: FileType::from_std(md.file_type()).unwrap_or(FileType::RegularFile),
        perm: (md.mode() & 0o7777) as u16,
        nlink: md.nlink() as u32,
        uid: md.uid(),
        gid: md.gid(),
        rdev: md.rdev() as u32,
        blksize: md.blksize() as u32,
        flags: 0,
    }
}

impl FaultFsImpl {
    fn entry(&self, reply: ReplyEntry, res: io::Result<(u64, std::fs::Metadata)>) {
        match res {
            Ok((ino, md)) => reply.entry(&TTL, &attr(ino, &md), Generation(0)),
            Err(e) => reply.error(err(&e)),
        }
    }

    fn empty(&self, reply: ReplyEmpty, res: io::Result<()>) {
        match res {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(&e)),
        }
    }
}

impl Filesystem for FaultFsImpl {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let res = self.shared.lock().lookup(parent.0, name);
        self.entry(reply, res);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.shared.lock().stat(ino.0, fh.map(|f| f.0)) {
            Ok(md) => reply.attr(&TTL, &attr(ino.0, &md)),
            Err(e) => reply.error(err(&e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let budget = self.shared.budget();
        let mut st = self.shared.lock();
        let res = st.setattr(
            ino.0,
            fh.map(|f| f.0),
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
            budget,
        );
        self.shared.publish(&st);
        drop(st);
        match res {
            Ok(md) => reply.attr(&TTL, &attr(ino.0, &md)),
            Err(e) => reply.error(err(&e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.shared.lock().readlink(ino.0) {
            Ok(target) => reply.data(target.as_os_str().as_bytes()),
            Err(e) => reply.error(err(&e)),
        }
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let res = self.shared.lock().mknod(parent.0, name, mode, rdev);
        self.entry(reply, res);
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let res = self.shared.lock().mkdir(parent.0, name, mode);
        self.entry(reply, res);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut st = self.shared.lock();
        let res = st.remove(parent.0, name, false);
        self.shared.publish(&st);
        drop(st);
        self.empty(reply, res);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let res = self.shared.lock().remove(parent.0, name, true);
        self.empty(reply, res);
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let res = self.shared.lock().symlink(parent.0, link_name, target);
        self.entry(reply, res);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut st = self.shared.lock();
        let res = st.rename(parent.0, name, newparent.0, newname, flags.bits());
        self.shared.publish(&st);
        drop(st);
        self.empty(reply, res);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let budget = self.shared.budget();
        let mut st = self.shared.lock();
        let res = st.open(ino.0, flags.0, budget);
        self.shared.publish(&st);
        drop(st);
        match res {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(err(&e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.shared.lock().read(fh.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(err(&e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let budget = self.shared.budget();
        let mut st = self.shared.lock();
        let res = st.write(fh.0, offset, data, budget);
        self.shared.publish(&st);
        drop(st);
        match res {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(err(&e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.shared.lock().release(fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        if self.shared.inject_fsync_failure("fsync", ino) {
            reply.error(Errno::EIO);
            return;
        }
        let mut st = self.shared.lock();
        st.fsync(ino.0, fh.0);
        self.shared.publish(&st);
        drop(st);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.shared.lock().opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(err(&e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let st = self.shared.lock();
        let entries = match st.dir_entries(fh.0) {
            Ok(entries) => entries,
            Err(e) => {
                reply.error(err(&e));
                return;
            }
        };
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, entry) in entries.iter().enumerate().skip(start) {
            if reply.add(INodeNo(entry.ino), i as u64 + 1, entry.kind, &entry.name) {
                break;
            }
        }
        drop(st);
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.shared.lock().releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        if self.shared.inject_fsync_failure("fsyncdir", ino) {
            reply.error(Errno::EIO);
            return;
        }
        let mut st = self.shared.lock();
        st.fsyncdir(ino.0);
        self.shared.publish(&st);
        drop(st);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let budget = self.shared.budget();
        let st = self.shared.lock();
        let res = st.statvfs();
        let used = st.used;
        drop(st);
        match (res, budget) {
            (Err(e), _) => reply.error(err(&e)),
            (Ok(vfs), None) => reply.statfs(
                vfs.f_blocks,
                vfs.f_bfree,
                vfs.f_bavail,
                vfs.f_files,
                vfs.f_ffree,
                vfs.f_bsize as u32,
                vfs.f_namemax as u32,
                vfs.f_frsize as u32,
            ),
            (Ok(vfs), Some(budget)) => {
                let free = budget.saturating_sub(used) / BSIZE;
                reply.statfs(
                    budget / BSIZE,
                    free,
                    free,
                    vfs.f_files,
                    vfs.f_ffree,
                    BSIZE as u32,
                    vfs.f_namemax as u32,
                    BSIZE as u32,
                );
            }
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let budget = self.shared.budget();
        let mut st = self.shared.lock();
        let res = st.create(parent.0, name, mode, flags, budget);
        self.shared.publish(&st);
        drop(st);
        match res {
            Ok((ino, md, fh)) => reply.created(
                &TTL,
                &attr(ino, &md),
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(err(&e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let budget = self.shared.budget();
        let mut st = self.shared.lock();
        let res = st.fallocate(ino.0, fh.0, offset, length, mode, budget);
        self.shared.publish(&st);
        drop(st);
        self.empty(reply, res);
    }
}
