//! End-to-end tests: each mounts a real FUSE filesystem (needs root and /dev/fuse).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use cairn_faultfs::FaultFs;
use tempfile::TempDir;

/// A mounted fault filesystem over a fresh backing dir.
struct Fixture {
    fs: Option<FaultFs>,
    backing: TempDir,
    mnt: TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let backing = tempfile::tempdir().unwrap();
        let mnt = tempfile::tempdir().unwrap();
        let fs = FaultFs::mount(backing.path(), mnt.path()).unwrap_or_else(|e| {
            panic!("mounting FaultFs failed (these tests need root and /dev/fuse): {e}")
        });
        Fixture {
            fs: Some(fs),
            backing,
            mnt,
        }
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.mnt.path().join(rel)
    }

    fn fs(&mut self) -> &mut FaultFs {
        self.fs.as_mut().unwrap()
    }

    fn power_cut(&mut self) -> cairn_faultfs::PowerCut {
        self.fs().power_cut().unwrap()
    }

    fn stash_entries(&self) -> usize {
        fs::read_dir(self.backing.path().join(".faultfs-stash"))
            .unwrap()
            .count()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // Unmount before the mountpoint TempDir goes away.
        if let Some(fs) = self.fs.take()
            && let Err(e) = fs.unmount()
        {
            eprintln!("unmount failed: {e}");
        }
    }
}

fn sync_dir(dir: &Path) {
    File::open(dir).unwrap().sync_all().unwrap();
}

fn write_file(path: &Path, data: &[u8]) {
    let mut f = File::create(path).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

/// Creates `path` with `data`, durable in name and content.
fn durable_file(path: &Path, data: &[u8]) {
    write_file(path, data);
    sync_dir(path.parent().unwrap());
}

#[test]
fn unsynced_data_is_lost() {
    let mut fx = Fixture::new();
    let path = fx.p("data");
    let mut f = File::create(&path).unwrap();
    f.write_all(b"hello world, this is synced").unwrap();
    f.sync_all().unwrap();
    sync_dir(fx.mnt.path());
    let synced = fs::read(&path).unwrap();

    f.write_all(b" -- appended, not synced").unwrap();
    f.write_all_at(b"HELLO", 0).unwrap();
    f.write_all_at(b"XX", 12).unwrap();
    let control = fx.fs().control();
    assert!(control.unsynced_bytes() > 0);
    assert_ne!(fs::read(&path).unwrap(), synced);
    drop(f);

    let cut = fx.power_cut();
    assert_eq!(fs::read(&path).unwrap(), synced);
    assert_eq!(cut.files_reverted, 1);
    assert_eq!(cut.names_reverted, 0);
    assert!(cut.bytes_discarded > 0);
    assert_eq!(control.unsynced_bytes(), 0);
    assert_eq!(control.used_bytes(), synced.len() as u64);
}

#[test]
fn create_needs_dir_fsync() {
    let mut fx = Fixture::new();
    write_file(&fx.p("a"), b"content of a");
    let cut = fx.power_cut();
    assert!(!fx.p("a").exists(), "create without dir fsync survived");
    assert_eq!(cut.names_reverted, 1);

    write_file(&fx.p("a"), b"content of a");
    sync_dir(fx.mnt.path());
    fx.power_cut();
    assert_eq!(fs::read(fx.p("a")).unwrap(), b"content of a");

    // Nested: a durable file in a directory whose own creation is not durable is gone too.
    fs::create_dir(fx.p("d")).unwrap();
    durable_file(&fx.p("d/f"), b"nested");
    fx.power_cut();
    assert!(!fx.p("d").exists());
    assert!(fx.p("a").exists());
}

#[test]
fn rename_over_existing_needs_dir_fsync() {
    let mut fx = Fixture::new();
    durable_file(&fx.p("a"), b"new contents");
    durable_file(&fx.p("b"), b"old contents");

    fs::rename(fx.p("a"), fx.p("b")).unwrap();
    assert!(!fx.p("a").exists());
    assert_eq!(fs::read(fx.p("b")).unwrap(), b"new contents");
    let cut = fx.power_cut();
    assert_eq!(cut.names_reverted, 1);
    assert_eq!(fs::read(fx.p("a")).unwrap(), b"new contents");
    assert_eq!(fs::read(fx.p("b")).unwrap(), b"old contents");
    assert_eq!(fx.stash_entries(), 0);

    fs::rename(fx.p("a"), fx.p("b")).unwrap();
    sync_dir(fx.mnt.path());
    assert_eq!(
        fx.stash_entries(),
        0,
        "replaced target not deleted once durable"
    );
    fx.power_cut();
    assert!(!fx.p("a").exists());
    assert_eq!(fs::read(fx.p("b")).unwrap(), b"new contents");

    // Across directories both must be fsync'd.
    fs::create_dir(fx.p("x")).unwrap();
    fs::create_dir(fx.p("y")).unwrap();
    sync_dir(fx.mnt.path());
    durable_file(&fx.p("x/f"), b"moving");
    fs::rename(fx.p("x/f"), fx.p("y/f")).unwrap();
    sync_dir(&fx.p("y"));
    fx.power_cut();
    assert_eq!(fs::read(fx.p("x/f")).unwrap(), b"moving");
    assert!(!fx.p("y/f").exists());
    fs::rename(fx.p("x/f"), fx.p("y/f")).unwrap();
    sync_dir(&fx.p("y"));
    sync_dir(&fx.p("x"));
    fx.power_cut();
    assert!(!fx.p("x/f").exists());
    assert_eq!(fs::read(fx.p("y/f")).unwrap(), b"moving");
}

#[test]
fn unlink_needs_dir_fsync() {
    let mut fx = Fixture::new();
    durable_file(&fx.p("victim"), b"still here");
    fs::remove_file(fx.p("victim")).unwrap();
    assert!(!fx.p("victim").exists());
    let names: Vec<_> = fs::read_dir(fx.mnt.path()).unwrap().collect();
    assert!(names.is_empty(), "stash or victim visible: {names:?}");
    fx.power_cut();
    assert_eq!(fs::read(fx.p("victim")).unwrap(), b"still here");

    fs::remove_file(fx.p("victim")).unwrap();
    sync_dir(fx.mnt.path());
    assert_eq!(fx.stash_entries(), 0);
    fx.power_cut();
    assert!(!fx.p("victim").exists());
    assert_eq!(fx.stash_entries(), 0);
}

#[test]
fn open_handle_survives_unlink() {
    let mut fx = Fixture::new();
    durable_file(&fx.p("f"), b"0123456789");
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(fx.p("f"))
        .unwrap();
    fs::remove_file(fx.p("f")).unwrap();
    sync_dir(fx.mnt.path());
    f.write_all_at(b"ab", 0).unwrap();
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "ab23456789");
    f.sync_all().unwrap();
    drop(f);
    fx.power_cut();
    assert!(!fx.p("f").exists());
}

#[test]
fn truncate_needs_fsync() {
    let mut fx = Fixture::new();
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    durable_file(&fx.p("t"), &data);
    let f = OpenOptions::new().write(true).open(fx.p("t")).unwrap();
    f.set_len(0).unwrap();
    assert_eq!(fs::metadata(fx.p("t")).unwrap().len(), 0);
    drop(f);
    // O_TRUNC goes the same way.
    File::create(fx.p("t")).unwrap();
    let cut = fx.power_cut();
    assert_eq!(cut.files_reverted, 1);
    assert_eq!(fs::read(fx.p("t")).unwrap(), data);

    // Growing by truncate is undone as well.
    OpenOptions::new()
        .write(true)
        .open(fx.p("t"))
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    fx.power_cut();
    assert_eq!(fs::read(fx.p("t")).unwrap(), data);
}

#[test]
fn injected_fsync_failure() {
    let mut fx = Fixture::new();
    let control = fx.fs().control();
    durable_file(&fx.p("f"), b"durable");
    let mut f = OpenOptions::new().append(true).open(fx.p("f")).unwrap();
    f.write_all(b" lost").unwrap();
    control.fail_fsyncs(1);
    let err = f.sync_all().unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert_eq!(control.failed_fsyncs(), 1);
    drop(f);
    fx.power_cut();
    assert_eq!(fs::read(fx.p("f")).unwrap(), b"durable");

    let mut f = OpenOptions::new().append(true).open(fx.p("f")).unwrap();
    f.write_all(b" kept").unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert_eq!(control.failed_fsyncs(), 1);
    fx.power_cut();
    assert_eq!(fs::read(fx.p("f")).unwrap(), b"durable kept");

    // fsyncdir fails too, and the pending count is reset by a power cut.
    File::create(fx.p("g")).unwrap();
    control.fail_fsyncs(2);
    let err = File::open(fx.mnt.path()).unwrap().sync_all().unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    assert_eq!(control.failed_fsyncs(), 2);
    fx.power_cut();
    assert!(!fx.p("g").exists());
    File::create(fx.p("g")).unwrap().sync_all().unwrap();
    assert_eq!(control.failed_fsyncs(), 2);
}

fn statvfs_free(path: &Path) -> u64 {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    st.f_bavail * st.f_frsize
}

#[test]
fn budget_gives_enospc() {
    let mut fx = Fixture::new();
    let control = fx.fs().control();
    durable_file(&fx.p("existing"), &[7; 10_000]);
    let used = control.used_bytes();
    assert_eq!(used, 10_000);
    control.set_budget(Some(used + (1 << 20)));
    assert!(statvfs_free(fx.mnt.path()) <= 1 << 20);

    let mut f = File::create(fx.p("big")).unwrap();
    let chunk = vec![1u8; 64 * 1024];
    let mut written = 0u64;
    let mut failure = None;
    while written < 2 << 20 {
        match f.write_all(&chunk) {
            Ok(()) => written += chunk.len() as u64,
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let err = failure.expect("2 MiB fitted in a 1 MiB budget");
    assert_eq!(err.raw_os_error(), Some(28), "{err}");
    assert!(written <= 1 << 20);
    assert!(control.used_bytes() <= used + (1 << 20));
    assert!(statvfs_free(fx.mnt.path()) <= 64 * 1024);

    // Deleting frees space at once.
    fs::remove_file(fx.p("existing")).unwrap();
    assert_eq!(
        control.used_bytes(),
        fs::metadata(fx.p("big")).unwrap().len()
    );

    control.set_budget(None);
    for _ in 0..32 {
        f.write_all(&chunk).unwrap();
    }
    f.sync_all().unwrap();
    assert!(statvfs_free(fx.mnt.path()) > 1 << 20);
}

#[test]
fn engine_like_appends_with_power_cuts() {
    let mut fx = Fixture::new();
    let path = fx.p("wal");
    File::create(&path).unwrap().sync_all().unwrap();
    sync_dir(fx.mnt.path());
    let mut expected: Vec<u8> = Vec::new();
    let mut n = 0u32;
    for round in 0..3 {
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        assert_eq!(f.metadata().unwrap().len(), expected.len() as u64);
        let mut synced_len = expected.len();
        for i in 0..500 {
            let record = format!("round {round} record {n} {}\n", "x".repeat(n as usize % 97));
            n += 1;
            f.write_all(record.as_bytes()).unwrap();
            expected.extend_from_slice(record.as_bytes());
            if i % 7 == 0 {
                f.sync_data().unwrap();
                synced_len = expected.len();
            }
        }
        // Unsynced tail, then the crash.
        f.write_all(b"torn tail").unwrap();
        drop(f);
        let cut = fx.power_cut();
        expected.truncate(synced_len);
        assert_eq!(cut.names_reverted, 0);
        let got = fs::read(&path).unwrap();
        assert_eq!(got.len(), synced_len, "round {round}");
        assert_eq!(got, expected, "round {round}");
    }
}

#[test]
fn shell_tools_copy_and_remove_tree() {
    let fx = Fixture::new();
    let src = tempfile::tempdir().unwrap();
    for d in ["a", "a/b", "a/b/c", "e"] {
        fs::create_dir(src.path().join(d)).unwrap();
    }
    for (i, f) in ["a/1", "a/b/2", "a/b/c/3", "e/4", "5"].iter().enumerate() {
        fs::write(src.path().join(f), vec![i as u8; 1000 * (i + 1)]).unwrap();
    }
    let run = |cmd: &mut Command| {
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{cmd:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    run(Command::new("cp")
        .arg("-r")
        .arg(src.path())
        .arg(fx.p("tree")));
    let diff = run(Command::new("diff")
        .arg("-r")
        .arg(src.path())
        .arg(fx.p("tree")));
    assert_eq!(diff, "");
    let listing = run(Command::new("ls").arg("-la").arg(fx.mnt.path()));
    assert!(listing.contains("tree"));
    assert!(!listing.contains("faultfs-stash"), "{listing}");
    run(Command::new("rm").arg("-rf").arg(fx.p("tree")));
    let listing = run(Command::new("ls").arg("-A").arg(fx.mnt.path()));
    assert_eq!(listing, "");
}

#[test]
fn write_throughput() {
    let fx = Fixture::new();
    let mut f = File::create(fx.p("big")).unwrap();
    let block = vec![0xabu8; 4096];
    let started = Instant::now();
    for _ in 0..(50 << 20) / 4096 {
        f.write_all(&block).unwrap();
    }
    f.sync_all().unwrap();
    let took = started.elapsed();
    eprintln!("50 MiB in 4 KiB writes + fsync: {took:?}");
    assert_eq!(fs::metadata(fx.p("big")).unwrap().len(), 50 << 20);
    let started = Instant::now();
    let mut buf = Vec::new();
    File::open(fx.p("big"))
        .unwrap()
        .read_to_end(&mut buf)
        .unwrap();
    eprintln!("read back 50 MiB: {:?}", started.elapsed());
    assert_eq!(buf.len(), 50 << 20);
}

#[test]
fn data_undo_follows_renames_and_unlinks() {
    let mut fx = Fixture::new();
    fs::create_dir(fx.p("d")).unwrap();
    sync_dir(fx.mnt.path());
    durable_file(&fx.p("d/f"), b"durable");
    durable_file(&fx.p("g"), b"durable g");

    // Unsynced data, then the directory moves (durably) and the file is unlinked (not).
    let f = OpenOptions::new().write(true).open(fx.p("d/f")).unwrap();
    f.write_all_at(b"CHANGED and longer", 0).unwrap();
    drop(f);
    fs::rename(fx.p("d"), fx.p("e")).unwrap();
    sync_dir(fx.mnt.path());
    let g = OpenOptions::new().append(true).open(fx.p("g")).unwrap();
    (&g).write_all(b" plus").unwrap();
    fs::remove_file(fx.p("g")).unwrap();
    (&g).write_all(b" more").unwrap();
    drop(g);

    let cut = fx.power_cut();
    assert_eq!(cut.files_reverted, 2);
    assert_eq!(cut.names_reverted, 1);
    assert!(!fx.p("d").exists());
    assert_eq!(fs::read(fx.p("e/f")).unwrap(), b"durable");
    assert_eq!(fs::read(fx.p("g")).unwrap(), b"durable g");

    // A directory rename that is not durable moves back, with the data reverted inside.
    let f = OpenOptions::new().append(true).open(fx.p("e/f")).unwrap();
    (&f).write_all(b"!!").unwrap();
    drop(f);
    fs::rename(fx.p("e"), fx.p("d")).unwrap();
    fx.power_cut();
    assert!(!fx.p("d").exists());
    assert_eq!(fs::read(fx.p("e/f")).unwrap(), b"durable");
}

#[test]
fn preallocated_file_keeps_undo_small() {
    let mut fx = Fixture::new();
    durable_file(&fx.p("journal"), b"head");
    let control = fx.fs().control();
    let f = OpenOptions::new()
        .write(true)
        .open(fx.p("journal"))
        .unwrap();
    f.set_len(64 << 20).unwrap();
    f.sync_all().unwrap();
    assert_eq!(control.used_bytes(), 64 << 20);
    for i in 0..100u64 {
        f.write_all_at(&[i as u8; 4096], 4 + i * 4096).unwrap();
    }
    f.sync_data().unwrap();
    f.write_all_at(b"unsynced", 4).unwrap();
    drop(f);
    fx.power_cut();
    let data = fs::read(fx.p("journal")).unwrap();
    assert_eq!(data.len(), 64 << 20);
    assert_eq!(&data[..4], b"head");
    assert_eq!(&data[4..4 + 4096], &[0u8; 4096][..]);
    assert_eq!(&data[4 + 4096..4 + 8192], &[1u8; 4096][..]);
}

#[test]
fn power_cut_after_killing_a_user() {
    let mut fx = Fixture::new();
    durable_file(&fx.p("f"), b"durable\n");
    // A process with its cwd in the mount and a file open for append.
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("exec 3>>f; echo unsynced >&3; echo ready; exec sleep 1000")
        .current_dir(fx.mnt.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = [0u8; 6];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut line)
        .unwrap();
    assert_eq!(&line, b"ready\n");
    assert_eq!(fs::read(fx.p("f")).unwrap(), b"durable\nunsynced\n");
    // Busy: while the process lives the power cut gives up (after about 5 s) with EBUSY
    // and the mount stays as it was.
    let started = Instant::now();
    let err = fx.fs().power_cut().unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EBUSY), "{err}");
    eprintln!("busy power cut gave up after {:?}", started.elapsed());
    assert_eq!(fs::read(fx.p("f")).unwrap(), b"durable\nunsynced\n");
    // So callers kill first.
    child.kill().unwrap();
    child.wait().unwrap();
    let started = Instant::now();
    fx.power_cut();
    eprintln!("power cut took {:?}", started.elapsed());
    assert_eq!(fs::read(fx.p("f")).unwrap(), b"durable\n");
}

#[test]
fn o_dsync_writes_are_durable() {
    use std::os::unix::fs::OpenOptionsExt;
    let mut fx = Fixture::new();
    durable_file(&fx.p("log"), b"");
    let control = fx.fs().control();
    let mut f = OpenOptions::new()
        .append(true)
        .custom_flags(libc::O_DSYNC)
        .open(fx.p("log"))
        .unwrap();
    f.write_all(b"each write is synced").unwrap();
    assert_eq!(control.unsynced_bytes(), 0);
    drop(f);
    fx.power_cut();
    assert_eq!(fs::read(fx.p("log")).unwrap(), b"each write is synced");
}

/// Whether `/proc/self/mountinfo` lists a mount at `path` (which holds no escaped byte
/// but spaces).
fn mounted(path: &Path) -> bool {
    let field = path.to_str().unwrap().replace(' ', "\\040");
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(field.as_str()))
}

/// The child of [`a_mount_whose_process_died_is_detached_by_the_next_mount`]: mounts at
/// `mount point` under `$CAIRN_FAULTFS_ORPHAN`, says so, and waits to be killed.
#[test]
#[ignore = "child process of a_mount_whose_process_died_is_detached_by_the_next_mount"]
fn orphan_child() {
    let base = PathBuf::from(std::env::var_os("CAIRN_FAULTFS_ORPHAN").expect("run by the parent"));
    let fs = FaultFs::mount(&base.join("backing"), &base.join("mount point")).unwrap();
    println!("mounted");
    std::io::stdout().flush().unwrap();
    // Bounded: the parent kills it long before.
    std::thread::sleep(std::time::Duration::from_secs(120));
    drop(fs);
}

/// A test process killed with its mount leaves a dead mount behind (every call on it fails
/// with ENOTCONN, and its temp dir cannot be removed); the next mount detaches it, and
/// leaves the mounts of live processes alone.
#[test]
fn a_mount_whose_process_died_is_detached_by_the_next_mount() {
    use std::io::BufRead;
    let base = tempfile::tempdir().unwrap();
    // A space, which the mount table escapes.
    let mnt = base.path().canonicalize().unwrap().join("mount point");
    fs::create_dir(&mnt).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["orphan_child", "--exact", "--ignored", "--nocapture"])
        .env("CAIRN_FAULTFS_ORPHAN", base.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = std::io::BufReader::new(child.stdout.take().unwrap());
    let said = out.lines().map_while(Result::ok).any(|l| l == "mounted");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(said, "the child ended without mounting");
    // Another test's mount may have detached it already; if not, the next one does.
    let mut fx = Fixture::new();
    assert!(!mounted(&mnt), "the dead child's mount is still there");
    // The live mount still serves, and survives another sweep.
    durable_file(&fx.p("f"), b"still here");
    let live = fx.mnt.path().canonicalize().unwrap();
    assert!(!cairn_faultfs::sweep_orphans().contains(&live));
    assert!(mounted(&live));
    assert_eq!(fs::read(fx.p("f")).unwrap(), b"still here");
    fx.power_cut();
    assert_eq!(fs::read(fx.p("f")).unwrap(), b"still here");
    fs::remove_dir_all(&mnt).unwrap();
}
