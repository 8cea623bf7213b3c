//! The disk model: what is visible (the backing directory) and how to take back what is
//! not durable (per-file undo logs and a log of pending name operations).
//!
//! Everything here runs under one mutex (see [`crate::fuse::Shared`]); no method blocks on
//! anything but the backing filesystem.

use std::collections::HashMap;
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File, OpenOptions, Permissions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use fuser::{FileType, TimeOrNow};
use tracing::debug;

use crate::PowerCut;

/// Name of the hidden directory (inside the backing directory) that holds unlinked files and
/// replaced rename targets until the operation that removed them is durable.
pub(crate) const STASH: &str = ".faultfs-stash";
/// FUSE inode number of the root directory.
pub(crate) const ROOT_INO: u64 = 1;

/// One step of a file's undo log: before a modification the file had `old_size` bytes, and
/// `bytes` were at `offset` (always within `old_size`).
struct UndoEntry {
    old_size: u64,
    offset: u64,
    bytes: Vec<u8>,
}

/// What the filesystem knows about one FUSE inode.
struct Inode {
    /// Backing path relative to the backing root ("" for the root). A path inside
    /// [`STASH`] while its unlink is pending; `None` once the file is durably gone.
    path: Option<PathBuf>,
    /// Undo log since the last fsync, oldest first.
    undo: Vec<UndoEntry>,
    /// Bytes written since the last fsync.
    unsynced: u64,
}

/// A name operation that is visible but not durable yet.
enum NameKind {
    /// A file, directory, symlink or node was created at `path`.
    Create { path: PathBuf },
    /// `path` was unlinked or rmdir'ed; the object waits at `stash`.
    Remove { path: PathBuf, stash: PathBuf },
    /// `from` was renamed to `to`; a replaced target waits at `replaced`.
    Rename {
        from: PathBuf,
        to: PathBuf,
        replaced: Option<PathBuf>,
    },
}

struct NameOp {
    kind: NameKind,
    /// Directories (FUSE inodes) that still need an fsyncdir before the operation is durable.
    pending: Vec<u64>,
}

impl NameOp {
    /// Rewrites user paths under `from` to be under `to` (a rename that became durable
    /// before this older operation).
    fn rewrite_prefix(&mut self, from: &Path, to: &Path) {
        let fix = |p: &mut PathBuf| {
            if let Ok(rest) = p.strip_prefix(from) {
                *p = join(to, rest);
            }
        };
        match &mut self.kind {
            NameKind::Create { path } | NameKind::Remove { path, .. } => fix(path),
            NameKind::Rename { from, to, .. } => {
                fix(from);
                fix(to);
            }
        }
    }
}

/// An open file handle.
pub(crate) struct OpenFile {
    pub(crate) ino: u64,
    pub(crate) file: File,
}

/// One directory entry of an opendir snapshot.
pub(crate) struct DirEntry {
    pub(crate) ino: u64,
    pub(crate) kind: FileType,
    pub(crate) name: OsString,
}

/// Result type of model operations: errors carry the errno to return.
pub(crate) type Res<T> = Result<T, io::Error>;

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

/// `base.join(rest)`, where an empty `base` is the root (so the result stays relative).
fn join(base: &Path, rest: &Path) -> PathBuf {
    if rest.as_os_str().is_empty() {
        base.to_path_buf()
    } else {
        base.join(rest)
    }
}

pub(crate) fn cpath(p: &Path) -> Res<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| errno(libc::EINVAL))
}

/// Removes whatever is at `abs` (a directory recursively). Does not follow symlinks.
fn remove_any(abs: &Path) -> io::Result<()> {
    let md = fs::symlink_metadata(abs)?;
    if md.is_dir() {
        fs::remove_dir_all(abs)
    } else {
        fs::remove_file(abs)
    }
}

/// Total size of the regular files under `dir`, skipping `skip`.
fn walk_size(dir: &Path, skip: Option<&Path>) -> u64 {
    let Ok(rd) = fs::read_dir(dir) else {
        return 0;
    };
    let mut total = 0;
    for entry in rd.flatten() {
        let path = entry.path();
        if Some(path.as_path()) == skip {
            continue;
        }
        let Ok(md) = fs::symlink_metadata(&path) else {
            continue;
        };
        if md.is_dir() {
            total += walk_size(&path, None);
        } else if md.is_file() {
            total += md.len();
        }
    }
    total
}

/// The whole mutable state of a mounted fault filesystem.
pub(crate) struct State {
    /// Canonical backing directory.
    root: PathBuf,
    inodes: HashMap<u64, Inode>,
    by_path: HashMap<PathBuf, u64>,
    next_ino: u64,
    files: HashMap<u64, OpenFile>,
    dirs: HashMap<u64, Vec<DirEntry>>,
    next_fh: u64,
    /// Pending (not durable) name operations, oldest first.
    log: Vec<NameOp>,
    next_stash: u64,
    /// Total size of all visible files.
    pub(crate) used: u64,
    /// Bytes written and not yet fsync'd.
    pub(crate) unsynced: u64,
}

impl State {
    /// Takes `root` (canonical, existing) as a fully durable disk.
    pub(crate) fn new(root: PathBuf) -> io::Result<State> {
        let mut st = State {
            root,
            inodes: HashMap::new(),
            by_path: HashMap::new(),
            next_ino: ROOT_INO + 1,
            files: HashMap::new(),
            dirs: HashMap::new(),
            next_fh: 1,
            log: Vec::new(),
            next_stash: 0,
            used: 0,
            unsynced: 0,
        };
        st.reset()?;
        Ok(st)
    }

    /// Forgets every inode and handle, empties the stash and recounts the used bytes.
    fn reset(&mut self) -> io::Result<()> {
        self.files.clear();
        self.dirs.clear();
        self.log.clear();
        self.inodes.clear();
        self.by_path.clear();
        self.inodes.insert(
            ROOT_INO,
            Inode {
                path: Some(PathBuf::new()),
                undo: Vec::new(),
                unsynced: 0,
            },
        );
        self.by_path.insert(PathBuf::new(), ROOT_INO);
        let stash = self.root.join(STASH);
        match remove_any(&stash) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        fs::create_dir(&stash)?;
        self.used = walk_size(&self.root, Some(&stash));
        self.unsynced = 0;
        Ok(())
    }

    fn abs(&self, rel: &Path) -> PathBuf {
        join(&self.root, rel)
    }

    /// Relative path of `ino`.
    fn path_of(&self, ino: u64) -> Res<PathBuf> {
        self.inodes
            .get(&ino)
            .and_then(|i| i.path.clone())
            .ok_or_else(|| errno(libc::ENOENT))
    }

    /// Relative path of `name` in directory `parent`; ENOENT for the stash.
    fn child(&self, parent: u64, name: &OsStr) -> Res<PathBuf> {
        if parent == ROOT_INO && name == STASH {
            return Err(errno(libc::ENOENT));
        }
        Ok(join(&self.path_of(parent)?, Path::new(name)))
    }

    /// Like [`State::child`] for a name about to be created: the stash name is refused.
    fn new_child(&self, parent: u64, name: &OsStr) -> Res<PathBuf> {
        if parent == ROOT_INO && name == STASH {
            return Err(errno(libc::EPERM));
        }
        self.child(parent, name)
    }

    /// The inode number for a relative path, allocating one if needed.
    fn ino_for(&mut self, rel: &Path) -> u64 {
        if let Some(&ino) = self.by_path.get(rel) {
            return ino;
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.inodes.insert(
            ino,
            Inode {
                path: Some(rel.to_path_buf()),
                undo: Vec::new(),
                unsynced: 0,
            },
        );
        self.by_path.insert(rel.to_path_buf(), ino);
        ino
    }

    /// Whether the size of `ino` counts towards the used bytes (it has a visible name).
    fn counts(&self, ino: u64) -> bool {
        self.inodes
            .get(&ino)
            .and_then(|i| i.path.as_ref())
            .is_some_and(|p| !p.starts_with(STASH))
    }

    fn check_budget(&self, ino: u64, growth: u64, budget: Option<u64>) -> Res<()> {
        if let Some(budget) = budget
            && growth > 0
            && self.counts(ino)
            && self.used.saturating_add(growth) > budget
        {
            debug!(
                used = self.used,
                growth, budget, "faultfs: ENOSPC (budget exhausted)"
            );
            return Err(errno(libc::ENOSPC));
        }
        Ok(())
    }

    fn add_used(&mut self, ino: u64, old_size: u64, new_size: u64) {
        if self.counts(ino) {
            self.used = (self.used + new_size).saturating_sub(old_size);
        }
    }

    /// Moves the paths of every inode at or under `from` to be under `to`.
    fn move_paths(&mut self, from: &Path, to: &Path, is_dir: bool) {
        let moved: Vec<(PathBuf, u64)> = if is_dir {
            self.by_path
                .iter()
                .filter(|(p, _)| p.starts_with(from))
                .map(|(p, &i)| (p.clone(), i))
                .collect()
        } else {
            self.by_path
                .get(from)
                .map(|&i| (from.to_path_buf(), i))
                .into_iter()
                .collect()
        };
        for (old, _) in &moved {
            self.by_path.remove(old);
        }
        for (old, ino) in moved {
            let Ok(rest) = old.strip_prefix(from) else {
                continue;
            };
            let new = join(to, rest);
            if let Some(inode) = self.inodes.get_mut(&ino) {
                inode.path = Some(new.clone());
            }
            self.by_path.insert(new, ino);
        }
    }

    /// Marks every inode at or under `rel` as durably gone.
    fn forget_paths(&mut self, rel: &Path) {
        let gone: Vec<(PathBuf, u64)> = self
            .by_path
            .iter()
            .filter(|(p, _)| p.starts_with(rel))
            .map(|(p, &i)| (p.clone(), i))
            .collect();
        for (p, ino) in gone {
            self.by_path.remove(&p);
            if let Some(inode) = self.inodes.get_mut(&ino) {
                inode.path = None;
                inode.undo = Vec::new();
                self.unsynced = self.unsynced.saturating_sub(inode.unsynced);
                inode.unsynced = 0;
            }
        }
    }

    fn new_stash(&mut self) -> PathBuf {
        self.next_stash += 1;
        Path::new(STASH).join(self.next_stash.to_string())
    }

    fn log_op(&mut self, kind: NameKind, dirs: &[u64]) {
        let mut pending = dirs.to_vec();
        pending.dedup();
        self.log.push(NameOp { kind, pending });
    }

    fn alloc_fh(&mut self) -> u64 {
        let fh = self.next_fh;
        self.next_fh += 1;
        fh
    }

    // ---------------------------------------------------------------- lookups and attrs

    /// Looks up `name` in `parent`.
    pub(crate) fn lookup(&mut self, parent: u64, name: &OsStr) -> Res<(u64, fs::Metadata)> {
        let rel = self.child(parent, name)?;
        let md = fs::symlink_metadata(self.abs(&rel))?;
        Ok((self.ino_for(&rel), md))
    }

    /// Attributes of `ino`, through the open handle `fh` if there is one.
    pub(crate) fn stat(&self, ino: u64, fh: Option<u64>) -> Res<fs::Metadata> {
        if let Some(of) = fh.and_then(|fh| self.files.get(&fh))
            && of.ino == ino
        {
            return of.file.metadata();
        }
        fs::symlink_metadata(self.abs(&self.path_of(ino)?))
    }

    /// A file to modify `ino` through: a duplicate of handle `fh`, or the path opened anew.
    fn file_for(&self, ino: u64, fh: Option<u64>) -> Res<File> {
        if let Some(of) = fh.and_then(|fh| self.files.get(&fh))
            && of.ino == ino
        {
            return of.file.try_clone();
        }
        let abs = self.abs(&self.path_of(ino)?);
        OpenOptions::new().read(true).write(true).open(abs)
    }

    /// Records in the undo log of `ino` the state of `[offset, end)` (only the part within
    /// the current size `cur`) and the current size.
    fn record_undo(&mut self, ino: u64, file: &File, cur: u64, offset: u64, end: u64) -> Res<()> {
        let bytes = pre_image(file, offset, end.min(self.undo_floor(ino, cur)))?;
        self.push_undo(ino, cur, offset, bytes)
    }

    /// The durable size of `ino` (its current size `cur` if nothing is pending). Replaying
    /// the undo log ends by cutting the file to this size, so bytes at or past it need no
    /// pre-image (this keeps pre-allocated files and appends cheap).
    fn undo_floor(&self, ino: u64, cur: u64) -> u64 {
        self.inodes
            .get(&ino)
            .and_then(|i| i.undo.first())
            .map_or(cur, |e| e.old_size)
            .min(cur)
    }

    fn push_undo(&mut self, ino: u64, cur: u64, offset: u64, bytes: Vec<u8>) -> Res<()> {
        let Some(inode) = self.inodes.get_mut(&ino) else {
            return Err(errno(libc::ENOENT));
        };
        // A size-only entry right after another one with a size no larger adds nothing:
        // replaying both ends at the older, smaller size with the same bytes.
        if bytes.is_empty()
            && let Some(last) = inode.undo.last()
            && last.bytes.is_empty()
            && last.old_size <= cur
        {
            return Ok(());
        }
        inode.undo.push(UndoEntry {
            old_size: cur,
            offset,
            bytes,
        });
        Ok(())
    }

    /// Sets the size of `ino` (setattr size / O_TRUNC).
    fn truncate(&mut self, ino: u64, fh: Option<u64>, size: u64, budget: Option<u64>) -> Res<()> {
        let file = self.file_for(ino, fh)?;
        let cur = file.metadata()?.len();
        if size == cur {
            return Ok(());
        }
        self.check_budget(ino, size.saturating_sub(cur), budget)?;
        self.record_undo(ino, &file, cur, size, cur)?;
        file.set_len(size)?;
        self.add_used(ino, cur, size);
        Ok(())
    }

    /// Changes attributes of `ino` and returns the new ones.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn setattr(
        &mut self,
        ino: u64,
        fh: Option<u64>,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        budget: Option<u64>,
    ) -> Res<fs::Metadata> {
        if let Some(size) = size {
            self.truncate(ino, fh, size, budget)?;
        }
        let path = self.inodes.get(&ino).and_then(|i| i.path.clone());
        let handle = fh.and_then(|fh| self.files.get(&fh)).map(|of| &of.file);
        if let Some(mode) = mode {
            let perm = Permissions::from_mode(mode & 0o7777);
            match (&path, handle) {
                (_, Some(f)) => f.set_permissions(perm)?,
                (Some(p), None) => fs::set_permissions(self.abs(p), perm)?,
                (None, None) => return Err(errno(libc::ENOENT)),
            }
        }
        if uid.is_some() || gid.is_some() {
            match (&path, handle) {
                (_, Some(f)) => std::os::unix::fs::fchown(f, uid, gid)?,
                (Some(p), None) => std::os::unix::fs::lchown(self.abs(p), uid, gid)?,
                (None, None) => return Err(errno(libc::ENOENT)),
            }
        }
        if atime.is_some() || mtime.is_some() {
            let times = [timespec(atime), timespec(mtime)];
            // SAFETY: `times` is a valid array of two timespecs and the path/fd are valid.
            let rc = match (&path, handle) {
                (_, Some(f)) => unsafe { libc::futimens(f.as_raw_fd(), times.as_ptr()) },
                (Some(p), None) => {
                    let c = cpath(&self.abs(p))?;
                    unsafe {
                        libc::utimensat(
                            libc::AT_FDCWD,
                            c.as_ptr(),
                            times.as_ptr(),
                            libc::AT_SYMLINK_NOFOLLOW,
                        )
                    }
                }
                (None, None) => return Err(errno(libc::ENOENT)),
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        self.stat(ino, fh)
    }

    pub(crate) fn readlink(&self, ino: u64) -> Res<PathBuf> {
        fs::read_link(self.abs(&self.path_of(ino)?))
    }

    // ---------------------------------------------------------------- name operations

    /// Registers a new object at `rel` in `parent` as a pending creation.
    fn created(&mut self, parent: u64, rel: PathBuf) -> Res<(u64, fs::Metadata)> {
        let ino = self.ino_for(&rel);
        let abs = self.abs(&rel);
        self.log_op(NameKind::Create { path: rel }, &[parent]);
        Ok((ino, fs::symlink_metadata(abs)?))
    }

    /// Creates and opens a regular file.
    pub(crate) fn create(
        &mut self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
        budget: Option<u64>,
    ) -> Res<(u64, fs::Metadata, u64)> {
        let rel = self.new_child(parent, name)?;
        let abs = self.abs(&rel);
        let perm = mode & 0o7777;
        let (ino, md, file) = match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(perm)
            .open(&abs)
        {
            Ok(file) => {
                // The daemon's umask applied at creation; the caller's mode is already masked.
                let _ = file.set_permissions(Permissions::from_mode(perm));
                let (ino, md) = self.created(parent, rel)?;
                (ino, md, file)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && flags & libc::O_EXCL == 0 => {
                let file = OpenOptions::new().read(true).write(true).open(&abs)?;
                let ino = self.ino_for(&rel);
                if flags & libc::O_TRUNC != 0 {
                    let fh = self.alloc_fh();
                    self.files.insert(fh, OpenFile { ino, file });
                    self.truncate(ino, Some(fh), 0, budget)?;
                    let md = self.stat(ino, Some(fh))?;
                    return Ok((ino, md, fh));
                }
                let md = file.metadata()?;
                (ino, md, file)
            }
            Err(e) => return Err(e),
        };
        let fh = self.alloc_fh();
        self.files.insert(fh, OpenFile { ino, file });
        Ok((ino, md, fh))
    }

    /// Creates a node (regular file, fifo, device, socket).
    pub(crate) fn mknod(
        &mut self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        rdev: u32,
    ) -> Res<(u64, fs::Metadata)> {
        let rel = self.new_child(parent, name)?;
        let c = cpath(&self.abs(&rel))?;
        // SAFETY: `c` is a valid NUL-terminated path.
        if unsafe { libc::mknod(c.as_ptr(), mode as libc::mode_t, libc::dev_t::from(rdev)) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let _ = fs::set_permissions(self.abs(&rel), Permissions::from_mode(mode & 0o7777));
        self.created(parent, rel)
    }

    pub(crate) fn mkdir(
        &mut self,
        parent: u64,
        name: &OsStr,
        mode: u32,
    ) -> Res<(u64, fs::Metadata)> {
        let rel = self.new_child(parent, name)?;
        let abs = self.abs(&rel);
        fs::create_dir(&abs)?;
        let _ = fs::set_permissions(&abs, Permissions::from_mode(mode & 0o7777));
        self.created(parent, rel)
    }

    pub(crate) fn symlink(
        &mut self,
        parent: u64,
        name: &OsStr,
        target: &Path,
    ) -> Res<(u64, fs::Metadata)> {
        let rel = self.new_child(parent, name)?;
        std::os::unix::fs::symlink(target, self.abs(&rel))?;
        self.created(parent, rel)
    }

    /// Unlink (`dir == false`) or rmdir (`dir == true`): the object moves to the stash.
    pub(crate) fn remove(&mut self, parent: u64, name: &OsStr, dir: bool) -> Res<()> {
        let rel = self.child(parent, name)?;
        if rel.as_os_str().is_empty() {
            return Err(errno(libc::EBUSY));
        }
        let abs = self.abs(&rel);
        let md = fs::symlink_metadata(&abs)?;
        if dir {
            if !md.is_dir() {
                return Err(errno(libc::ENOTDIR));
            }
            if fs::read_dir(&abs)?.next().is_some() {
                return Err(errno(libc::ENOTEMPTY));
            }
        } else if md.is_dir() {
            return Err(errno(libc::EISDIR));
        }
        let stash = self.new_stash();
        fs::rename(&abs, self.abs(&stash))?;
        if md.is_file() {
            self.used = self.used.saturating_sub(md.len());
        }
        self.move_paths(&rel, &stash, md.is_dir());
        self.log_op(NameKind::Remove { path: rel, stash }, &[parent]);
        Ok(())
    }

    pub(crate) fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> Res<()> {
        if flags & !libc::RENAME_NOREPLACE != 0 {
            return Err(errno(libc::EINVAL));
        }
        let from = self.child(parent, name)?;
        let to = self.new_child(newparent, newname)?;
        let (from_abs, to_abs) = (self.abs(&from), self.abs(&to));
        let src = fs::symlink_metadata(&from_abs)?;
        if from == to {
            return Ok(());
        }
        if src.is_dir() && to.starts_with(&from) {
            return Err(errno(libc::EINVAL));
        }
        let target = match fs::symlink_metadata(&to_abs) {
            Ok(md) => Some(md),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let mut replaced = None;
        if let Some(tgt) = &target {
            if flags & libc::RENAME_NOREPLACE != 0 {
                return Err(errno(libc::EEXIST));
            }
            if src.ino() == tgt.ino() && src.dev() == tgt.dev() {
                return Ok(());
            }
            match (src.is_dir(), tgt.is_dir()) {
                (true, false) => return Err(errno(libc::ENOTDIR)),
                (false, true) => return Err(errno(libc::EISDIR)),
                (true, true) if fs::read_dir(&to_abs)?.next().is_some() => {
                    return Err(errno(libc::ENOTEMPTY));
                }
                _ => {}
            }
            let stash = self.new_stash();
            fs::rename(&to_abs, self.abs(&stash))?;
            replaced = Some(stash);
        }
        if let Err(e) = fs::rename(&from_abs, &to_abs) {
            if let Some(stash) = &replaced {
                let _ = fs::rename(self.abs(stash), &to_abs);
            }
            return Err(e);
        }
        if let (Some(stash), Some(tgt)) = (&replaced, &target) {
            if tgt.is_file() {
                self.used = self.used.saturating_sub(tgt.len());
            }
            self.move_paths(&to, stash, tgt.is_dir());
        }
        self.move_paths(&from, &to, src.is_dir());
        self.log_op(
            NameKind::Rename { from, to, replaced },
            &[parent, newparent],
        );
        Ok(())
    }

    // ---------------------------------------------------------------- file data

    pub(crate) fn open(&mut self, ino: u64, flags: i32, budget: Option<u64>) -> Res<u64> {
        let abs = self.abs(&self.path_of(ino)?);
        let writable = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let file = OpenOptions::new().read(true).write(writable).open(abs)?;
        let fh = self.alloc_fh();
        self.files.insert(fh, OpenFile { ino, file });
        if writable && flags & libc::O_TRUNC != 0 {
            self.truncate(ino, Some(fh), 0, budget)?;
        }
        Ok(fh)
    }

    pub(crate) fn release(&mut self, fh: u64) {
        self.files.remove(&fh);
    }

    pub(crate) fn read(&self, fh: u64, offset: u64, size: u32) -> Res<Vec<u8>> {
        let of = self.files.get(&fh).ok_or_else(|| errno(libc::EBADF))?;
        let mut buf = vec![0; size as usize];
        let mut n = 0;
        while n < buf.len() {
            match of.file.read_at(&mut buf[n..], offset + n as u64) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(n);
        Ok(buf)
    }

    pub(crate) fn write(
        &mut self,
        fh: u64,
        offset: u64,
        data: &[u8],
        budget: Option<u64>,
    ) -> Res<u32> {
        let of = self.files.get(&fh).ok_or_else(|| errno(libc::EBADF))?;
        let ino = of.ino;
        let cur = of.file.metadata()?.len();
        let end = offset + data.len() as u64;
        self.check_budget(ino, end.saturating_sub(cur), budget)?;
        let bytes = pre_image(&of.file, offset, end.min(self.undo_floor(ino, cur)))?;
        self.push_undo(ino, cur, offset, bytes)?;
        let of = self.files.get(&fh).ok_or_else(|| errno(libc::EBADF))?;
        of.file.write_all_at(data, offset)?;
        self.add_used(ino, cur, end.max(cur));
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.unsynced += data.len() as u64;
        }
        self.unsynced += data.len() as u64;
        Ok(data.len() as u32)
    }

    pub(crate) fn fallocate(
        &mut self,
        ino: u64,
        fh: u64,
        offset: u64,
        length: u64,
        mode: i32,
        budget: Option<u64>,
    ) -> Res<()> {
        let file = self.file_for(ino, Some(fh))?;
        let cur = file.metadata()?.len();
        let end = offset.saturating_add(length);
        let keep = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let (new_size, pre_end) = if mode & libc::FALLOC_FL_INSERT_RANGE != 0 {
            (cur + length, cur)
        } else if mode & libc::FALLOC_FL_COLLAPSE_RANGE != 0 {
            (cur.saturating_sub(length), cur)
        } else if mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) != 0 {
            (if keep { cur } else { cur.max(end) }, end)
        } else {
            (if keep { cur } else { cur.max(end) }, offset)
        };
        self.check_budget(ino, new_size.saturating_sub(cur), budget)?;
        self.record_undo(ino, &file, cur, offset, pre_end)?;
        // SAFETY: plain syscall on an fd we own.
        let rc = unsafe {
            libc::fallocate(
                file.as_raw_fd(),
                mode,
                offset as libc::off_t,
                length as libc::off_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        self.add_used(ino, cur, new_size);
        Ok(())
    }

    /// The inode an fsync is about: the handle's if known.
    fn handle_ino(&self, ino: u64, fh: u64) -> u64 {
        self.files.get(&fh).map_or(ino, |of| of.ino)
    }

    /// fsync / fdatasync: the file's data is durable.
    pub(crate) fn fsync(&mut self, ino: u64, fh: u64) {
        let ino = self.handle_ino(ino, fh);
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.undo = Vec::new();
            self.unsynced = self.unsynced.saturating_sub(inode.unsynced);
            inode.unsynced = 0;
        }
    }

    /// fsyncdir: name operations waiting only for this directory become durable.
    pub(crate) fn fsyncdir(&mut self, ino: u64) {
        let mut i = 0;
        while i < self.log.len() {
            self.log[i].pending.retain(|&d| d != ino);
            if !self.log[i].pending.is_empty() {
                i += 1;
                continue;
            }
            let op = self.log.remove(i);
            if let NameKind::Rename { from, to, .. } = &op.kind {
                for older in &mut self.log[..i] {
                    older.rewrite_prefix(from, to);
                }
            }
            self.commit(op);
        }
    }

    /// A name operation became durable: drop what it stashed.
    fn commit(&mut self, op: NameOp) {
        let stash = match op.kind {
            NameKind::Create { .. } => None,
            NameKind::Remove { stash, .. } => Some(stash),
            NameKind::Rename { replaced, .. } => replaced,
        };
        if let Some(stash) = stash {
            if let Err(e) = remove_any(&self.abs(&stash)) {
                debug!(?stash, %e, "faultfs: could not delete stashed object");
            }
            self.forget_paths(&stash);
        }
    }

    /// Clean unmount: everything is durable.
    pub(crate) fn commit_all(&mut self) {
        for op in std::mem::take(&mut self.log) {
            self.commit(op);
        }
        for inode in self.inodes.values_mut() {
            inode.undo = Vec::new();
            inode.unsynced = 0;
        }
        self.unsynced = 0;
        self.files.clear();
        self.dirs.clear();
        let _ = remove_any(&self.root.join(STASH));
    }

    // ---------------------------------------------------------------- directories

    pub(crate) fn opendir(&mut self, ino: u64) -> Res<u64> {
        let rel = self.path_of(ino)?;
        let parent_ino = rel
            .parent()
            .and_then(|p| self.by_path.get(p).copied())
            .unwrap_or(ROOT_INO);
        let mut entries = vec![
            DirEntry {
                ino,
                kind: FileType::Directory,
                name: ".".into(),
            },
            DirEntry {
                ino: parent_ino,
                kind: FileType::Directory,
                name: "..".into(),
            },
        ];
        for entry in fs::read_dir(self.abs(&rel))? {
            let entry = entry?;
            let name = entry.file_name();
            if ino == ROOT_INO && name == STASH {
                continue;
            }
            let kind = entry
                .file_type()
                .ok()
                .and_then(FileType::from_std)
                .unwrap_or(FileType::RegularFile);
            let child = self.ino_for(&join(&rel, Path::new(&name)));
            entries.push(DirEntry {
                ino: child,
                kind,
                name,
            });
        }
        let fh = self.alloc_fh();
        self.dirs.insert(fh, entries);
        Ok(fh)
    }

    pub(crate) fn dir_entries(&self, fh: u64) -> Res<&[DirEntry]> {
        self.dirs
            .get(&fh)
            .map(Vec::as_slice)
            .ok_or_else(|| errno(libc::EBADF))
    }

    pub(crate) fn releasedir(&mut self, fh: u64) {
        self.dirs.remove(&fh);
    }

    /// statvfs of the backing filesystem.
    pub(crate) fn statvfs(&self) -> Res<libc::statvfs> {
        let c = cpath(&self.root)?;
        // SAFETY: statvfs is plain old data; the kernel fills it.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: valid path and out pointer.
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(st)
    }

    // ---------------------------------------------------------------- power cut

    /// Takes back everything that is not durable. The session must be stopped.
    pub(crate) fn power_cut(&mut self) -> PowerCut {
        let mut cut = PowerCut::default();
        self.files.clear();
        self.dirs.clear();
        // Data first, while the inode paths are current.
        for inode in self.inodes.values_mut() {
            if inode.undo.is_empty() {
                continue;
            }
            cut.files_reverted += 1;
            cut.bytes_discarded += inode.unsynced;
            let Some(path) = &inode.path else { continue };
            let abs = join(&self.root, path);
            let file = match OpenOptions::new().write(true).open(&abs) {
                Ok(f) => f,
                Err(e) => {
                    debug!(?abs, %e, "faultfs: cannot revert data");
                    continue;
                }
            };
            for entry in inode.undo.iter().rev() {
                let res = file.set_len(entry.old_size).and_then(|()| {
                    if entry.bytes.is_empty() {
                        Ok(())
                    } else {
                        file.write_all_at(&entry.bytes, entry.offset)
                    }
                });
                if let Err(e) = res {
                    debug!(?abs, %e, "faultfs: data revert step failed");
                }
            }
        }
        // Then names, newest first.
        for op in std::mem::take(&mut self.log).into_iter().rev() {
            cut.names_reverted += 1;
            cut.names.push(match &op.kind {
                NameKind::Create { path } => format!("create {}", path.display()),
                NameKind::Remove { path, .. } => format!("unlink {}", path.display()),
                NameKind::Rename { from, to, .. } => {
                    format!("rename {} -> {}", from.display(), to.display())
                }
            });
            let res = match &op.kind {
                NameKind::Create { path } => remove_any(&self.abs(path)),
                NameKind::Remove { path, stash } => fs::rename(self.abs(stash), self.abs(path)),
                NameKind::Rename { from, to, replaced } => fs::rename(self.abs(to), self.abs(from))
                    .and_then(|()| match replaced {
                        Some(stash) => fs::rename(self.abs(stash), self.abs(to)),
                        None => Ok(()),
                    }),
            };
            if let Err(e) = res {
                debug!(%e, "faultfs: name revert step failed");
            }
        }
        if let Err(e) = self.reset() {
            debug!(%e, "faultfs: reset after power cut failed");
        }
        cut
    }
}

/// The bytes of `[offset, end)` of `file` (empty if `end <= offset`).
fn pre_image(file: &File, offset: u64, end: u64) -> Res<Vec<u8>> {
    if offset >= end {
        return Ok(Vec::new());
    }
    let mut buf = vec![0; (end - offset) as usize];
    file.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

fn timespec(t: Option<TimeOrNow>) -> libc::timespec {
    // SAFETY: timespec is plain old data.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    match t {
        None => ts.tv_nsec = libc::UTIME_OMIT,
        Some(TimeOrNow::Now) => ts.tv_nsec = libc::UTIME_NOW,
        Some(TimeOrNow::SpecificTime(t)) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => {
                ts.tv_sec = d.as_secs() as libc::time_t;
                ts.tv_nsec = d.subsec_nanos() as libc::c_long;
            }
            Err(e) => {
                let d = e.duration();
                let mut secs = -(d.as_secs() as libc::time_t);
                let mut nanos = i64::from(d.subsec_nanos());
                if nanos > 0 {
                    secs -= 1;
                    nanos = 1_000_000_000 - nanos;
                }
                ts.tv_sec = secs;
                ts.tv_nsec = nanos as libc::c_long;
            }
        },
    }
    ts
}

/// `SystemTime` from seconds and nanoseconds since the epoch; never panics.
pub(crate) fn system_time(secs: i64, nsecs: i64) -> SystemTime {
    let base = if secs >= 0 {
        UNIX_EPOCH.checked_add(std::time::Duration::from_secs(secs.unsigned_abs()))
    } else {
        UNIX_EPOCH.checked_sub(std::time::Duration::from_secs(secs.unsigned_abs()))
    };
    base.and_then(|t| t.checked_add(std::time::Duration::from_nanos(nsecs.max(0) as u64)))
        .unwrap_or(UNIX_EPOCH)
}
