//! `cairn backup`: save tables to a file, check a file, restore its tables.
//!
//! A backup is a text file of JSON lines: a header; the users with the SHA-256 of their
//! tokens (a backup of every table by an admin); then for each table a line with its name,
//! replication and partition boundaries, its rows as `[key, value]` in base64 and in key
//! order, and a line counting them; last, a line with the SHA-256 of everything before it.
//! A file without that last line, or whose checksum does not match, is refused whole.
//! Each partition is read from one point-in-time view on its leader (`Client::export`),
//! so it is copied as of one moment; the partitions of a table are read one after another.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use cairn_client::{Client, ExportPage, UserRecord};
use cairn_types::ErrorCode;
use clap::{Args, Subcommand};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::client_cmds::{Columns, Conn, tables_scope};

/// The newest format version, which this build writes when the file has users (a file
/// without is of version 1, which had no users line); it reads every version up to it.
const VERSION: u32 = 2;
/// Times a partition is read again from a new view (its view gone) before the backup fails.
const MAX_RESTARTS: u32 = 5;
/// Writes a restore keeps in flight.
const RESTORE_IN_FLIGHT: usize = 256;
/// How often a long backup or restore says how far it is.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// `cairn backup …`.
#[derive(Args, Debug)]
pub(crate) struct BackupArgs {
    #[command(subcommand)]
    cmd: BackupCmd,
}

#[derive(Subcommand, Debug)]
enum BackupCmd {
    /// Save tables to FILE, each partition as of one moment (see the README's "Backups").
    Save {
        /// The file to write; it must not exist.
        file: PathBuf,
        /// Save only this table (repeat for several; default: every table, and the users).
        #[arg(long = "table", value_name = "NAME")]
        tables: Vec<String>,
        /// Do not save the users (a backup of every table saves them, with their token
        /// hashes, when the caller is an admin).
        #[arg(long)]
        no_users: bool,
    },
    /// Check FILE whole (format and checksum) and say what it holds.
    Inspect {
        /// A file written by `cairn backup save`.
        file: PathBuf,
    },
    /// Create the users and tables saved in FILE, the tables with their partitions, and
    /// write their keys. A table that exists in the cluster is refused before anything is
    /// written; a user that exists is kept as the cluster has it.
    Restore {
        /// A file written by `cairn backup save`.
        file: PathBuf,
        /// Restore only this table (repeat for several; default: every table in FILE, and
        /// its users).
        #[arg(long = "table", value_name = "NAME")]
        tables: Vec<String>,
        /// Do not restore the users saved in FILE.
        #[arg(long)]
        no_users: bool,
        /// Replicas per partition of the restored tables, instead of those saved (say 1,
        /// to restore a production backup into a one-node playground).
        #[arg(long)]
        replication: Option<u32>,
    },
}

/// One line of a backup file: a row, or one of the other lines.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Line {
    /// A key and its value, in base64.
    Row(String, String),
    /// Anything else.
    Meta(Meta),
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum Meta {
    /// The first line.
    CairnBackup(Header),
    /// The cluster's users, right after the header (version 2 on).
    Users(Vec<SavedUser>),
    /// A table's rows follow.
    Table(TableHead),
    /// A table's rows have ended.
    TableEnd(TableEnd),
    /// The last line.
    End(End),
}

#[derive(Serialize, Deserialize)]
struct Header {
    version: u32,
    created_unix_ms: u64,
}

/// A user with the SHA-256 of its token, so that its token works on the restored cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedUser {
    name: String,
    role: String,
    /// The prefix of the tables it may use (empty: all).
    tables: String,
    /// In base64, as every byte string of the file.
    token_sha256: String,
}

impl SavedUser {
    fn of(u: &UserRecord) -> Self {
        Self {
            name: u.name.clone(),
            role: u.role.clone(),
            tables: u.tables.clone(),
            token_sha256: B64.encode(u.token_sha256),
        }
    }

    /// The user as the cluster takes it, or what is wrong with it: a name or role the
    /// cluster would refuse, or a hash that is not 32 bytes of base64.
    fn record(self) -> Result<UserRecord, String> {
        cairn_types::validate_user_name(&self.name).map_err(|e| e.to_string())?;
        if cairn_types::Role::parse(&self.role).is_none() {
            return Err(format!("role {:?} is not one this cairn knows", self.role));
        }
        let token_sha256 = B64
            .decode(&self.token_sha256)
            .ok()
            .and_then(|h| <[u8; 32]>::try_from(h).ok())
            .ok_or("a damaged token hash")?;
        Ok(UserRecord {
            name: self.name,
            role: self.role,
            tables: self.tables,
            token_sha256,
        })
    }
}

#[derive(Clone, Serialize, Deserialize)]
struct TableHead {
    name: String,
    replication: u32,
    /// Partition boundaries (the start keys of all partitions but the first), in base64.
    splits: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct TableEnd {
    name: String,
    keys: u64,
}

#[derive(Serialize, Deserialize)]
struct End {
    tables: u64,
    keys: u64,
    /// SHA-256 of every byte before this line, in hex.
    sha256: String,
}

/// Runs `cairn backup …`.
pub(crate) async fn run(a: BackupArgs, conn: Conn) -> anyhow::Result<ExitCode> {
    match a.cmd {
        BackupCmd::Save {
            file,
            tables,
            no_users,
        } => save(&conn.client()?, &file, &tables, no_users).await?,
        BackupCmd::Inspect { file } => {
            let s = check(&file)?;
            println!(
                "{}: a Cairn backup of {} table(s) and {} key(s), taken at {} ms after the Unix epoch; its checksum matches",
                file.display(),
                s.tables.len(),
                s.keys,
                s.created_unix_ms
            );
            match &s.users {
                None => println!("users: none saved"),
                Some(users) => {
                    println!("users: {}", users.len());
                    let mut cols = Columns::new(&["NAME", "ROLE", "TABLES"]);
                    for u in users {
                        cols.row(vec![
                            u.name.clone(),
                            u.role.clone(),
                            tables_scope(&u.tables),
                        ]);
                    }
                    cols.print();
                }
            }
            let mut cols = Columns::new(&["TABLE", "KEYS", "PARTITIONS", "REPLICATION"]);
            for (t, keys) in &s.tables {
                cols.row(vec![
                    t.name.clone(),
                    keys.to_string(),
                    (t.splits.len() + 1).to_string(),
                    t.replication.to_string(),
                ]);
            }
            cols.print();
        }
        BackupCmd::Restore {
            file,
            tables,
            no_users,
            replication,
        } => {
            let with_users = tables.is_empty() && !no_users;
            restore(&conn.client()?, &file, &tables, with_users, replication).await?
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A backup file being written, counting and hashing its bytes so that a partition can be
/// cut off and the last line can hold the checksum without reading the file again.
struct Writer {
    out: std::io::BufWriter<std::fs::File>,
    written: u64,
    sha256: Sha256,
}

/// A place in a [`Writer`]'s file to cut back to.
#[derive(Clone)]
struct Mark {
    at: u64,
    sha256: Sha256,
}

impl Writer {
    fn new(file: std::fs::File) -> Self {
        Self {
            out: std::io::BufWriter::new(file),
            written: 0,
            sha256: Sha256::new(),
        }
    }

    fn line(&mut self, line: &Line) -> anyhow::Result<()> {
        let mut b = serde_json::to_vec(line)?;
        b.push(b'\n');
        self.out.write_all(&b)?;
        self.sha256.update(&b);
        self.written += b.len() as u64;
        Ok(())
    }

    /// Where the file is now.
    fn mark(&self) -> Mark {
        Mark {
            at: self.written,
            sha256: self.sha256.clone(),
        }
    }

    /// Drops everything written after `mark`.
    fn cut(&mut self, mark: &Mark) -> anyhow::Result<()> {
        self.out.flush()?;
        let f = self.out.get_mut();
        f.set_len(mark.at)?;
        f.seek(SeekFrom::Start(mark.at))?;
        self.written = mark.at;
        self.sha256 = mark.sha256.clone();
        Ok(())
    }

    /// The SHA-256 in hex of everything written so far.
    fn checksum(&self) -> String {
        hex(&self.sha256.clone().finalize())
    }
}

async fn save(client: &Client, file: &Path, only: &[String], no_users: bool) -> anyhow::Result<()> {
    if file.exists() {
        bail!(
            "{} exists; pick another name (a backup never overwrites a file)",
            file.display()
        );
    }
    let users = if only.is_empty() && !no_users {
        match client.user_records().await {
            // None to save (an insecure cluster, say): no users line, so that the file
            // stays of version 1, which older builds read.
            Ok(u) if u.is_empty() => None,
            Ok(u) => Some(u.iter().map(SavedUser::of).collect::<Vec<_>>()),
            Err(e) if e.code == ErrorCode::PermissionDenied => {
                eprintln!(
                    "backup: the users are not saved: only an admin may read them ({e}); the tables are"
                );
                None
            }
            Err(e) => {
                bail!("cannot read the users: {e}; pass --no-users to save the tables without them")
            }
        }
    } else {
        None
    };
    let all = client
        .list_tables()
        .await
        .map_err(|e| anyhow::anyhow!("cannot list the tables: {e}"))?;
    for name in only {
        if !all.iter().any(|t| &t.name == name) {
            bail!("the cluster has no table {name:?} (`cairn table list` shows its tables)");
        }
    }
    let names: Vec<String> = all
        .into_iter()
        .map(|t| t.name)
        .filter(|n| only.is_empty() || only.contains(n))
        .collect();
    let partial = partial_name(file);
    let out = std::fs::File::create_new(&partial).with_context(|| {
        format!(
            "cannot create {} (if it is left from a save that did not finish, remove it)",
            partial.display()
        )
    })?;
    let mut w = Writer::new(out);
    let result = save_into(client, &mut w, users.as_deref(), &names).await;
    let (tables, keys) = match result {
        Ok(counts) => counts,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    let sha256 = w.checksum();
    w.line(&Line::Meta(Meta::End(End {
        tables,
        keys,
        sha256,
    })))?;
    w.out.flush()?;
    w.out
        .get_ref()
        .sync_all()
        .with_context(|| format!("cannot sync {}", partial.display()))?;
    drop(w);
    // A link, not a rename: it fails rather than replace a file made meanwhile.
    std::fs::hard_link(&partial, file)
        .with_context(|| format!("cannot link {} to {}", partial.display(), file.display()))?;
    std::fs::remove_file(&partial)
        .with_context(|| format!("cannot remove {}", partial.display()))?;
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).ok();
    }
    let users = users.map_or(String::new(), |u| format!(", {} user(s)", u.len()));
    println!(
        "saved {tables} table(s), {keys} key(s){users} to {} ({} bytes)",
        file.display(),
        std::fs::metadata(file).map(|m| m.len()).unwrap_or(0)
    );
    Ok(())
}

/// Where a backup is written until it is complete.
fn partial_name(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

/// Writes the header, `users` and tables `names`; answers how many tables and keys were
/// saved.
async fn save_into(
    client: &Client,
    w: &mut Writer,
    users: Option<&[SavedUser]>,
    names: &[String],
) -> anyhow::Result<(u64, u64)> {
    // Without users the file is of version 1, which older builds read too.
    w.line(&Line::Meta(Meta::CairnBackup(Header {
        version: if users.is_some() { VERSION } else { 1 },
        created_unix_ms: unix_ms(),
    })))?;
    if let Some(users) = users {
        w.line(&Line::Meta(Meta::Users(users.to_vec())))?;
    }
    let mut total = 0u64;
    let mut tables = 0u64;
    for name in names {
        let info = match client.describe_table(name).await {
            Ok(i) => i,
            // Dropped since the list: nothing to save.
            Err(e) if e.code == ErrorCode::TableNotFound => continue,
            Err(e) => bail!("cannot describe table {name}: {e}"),
        };
        let splits = info
            .partitions
            .iter()
            .skip(1)
            .map(|p| B64.encode(&p.start))
            .collect();
        w.line(&Line::Meta(Meta::Table(TableHead {
            name: name.clone(),
            replication: info.replication,
            splits,
        })))?;
        let keys = save_rows(w, name, |cursor| async move {
            client.export(name, &cursor, 0).await
        })
        .await?;
        w.line(&Line::Meta(Meta::TableEnd(TableEnd {
            name: name.clone(),
            keys,
        })))?;
        total += keys;
        tables += 1;
    }
    Ok((tables, total))
}

/// Writes the rows of table `name`, page by page from `fetch` (a cursor to the page there),
/// reading a partition again from its start when its view is gone; answers the count.
async fn save_rows<F, Fut>(w: &mut Writer, name: &str, mut fetch: F) -> anyhow::Result<u64>
where
    F: FnMut(Vec<u8>) -> Fut,
    Fut: std::future::Future<Output = Result<ExportPage, cairn_client::Error>>,
{
    let mut shown = Instant::now();
    let mut keys = 0u64;
    // Where the current partition's rows begin in the file, and how many keys came before.
    let (mut mark, mut keys_at_mark) = (w.mark(), 0u64);
    let mut partition_restart: Option<Vec<u8>> = None;
    let mut cursor: Vec<u8> = Vec::new();
    let mut restarts = 0;
    // Whether `cursor` reads on in a partition's view (the last page was not its last).
    let mut mid_partition = false;
    loop {
        let page = match fetch(cursor.clone()).await {
            Ok(p) => p,
            Err(e) if e.code == ErrorCode::TableNotFound => {
                bail!("table {name} was dropped during the backup")
            }
            // The view is gone (its node restarted), or its node does not answer (a crash):
            // read the partition again, from a new view on whichever replica leads it now.
            Err(e)
                if mid_partition
                    && matches!(e.code, ErrorCode::NotFound | ErrorCode::Unavailable)
                    && restarts < MAX_RESTARTS =>
            {
                let Some(restart) = partition_restart.clone() else {
                    bail!("cannot save table {name}: {e}");
                };
                restarts += 1;
                eprintln!("backup: {name}: {e}; reading that partition again");
                w.cut(&mark)?;
                keys = keys_at_mark;
                cursor = restart;
                mid_partition = false;
                continue;
            }
            // A partition's first page: nothing of it written yet, so just ask again (a
            // leader being elected after the crash that lost the view).
            Err(e)
                if !mid_partition
                    && matches!(e.code, ErrorCode::NotFound | ErrorCode::Unavailable)
                    && restarts < MAX_RESTARTS =>
            {
                restarts += 1;
                eprintln!("backup: {name}: {e}; asking again");
                continue;
            }
            Err(e) => bail!("cannot save table {name} after {keys} key(s): {e}"),
        };
        if page.keys.len() != page.values.len() {
            bail!(
                "cannot save table {name}: a page of {} key(s) came with {} value(s)",
                page.keys.len(),
                page.values.len()
            );
        }
        if !mid_partition && partition_restart.as_ref() != Some(&page.restart) {
            // The first page of the next partition (not of one read again).
            mark = w.mark();
            keys_at_mark = keys;
            partition_restart = Some(page.restart.clone());
            restarts = 0;
        }
        mid_partition = !page.partition_done;
        for (k, v) in page.keys.iter().zip(&page.values) {
            w.line(&Line::Row(B64.encode(k), B64.encode(v)))?;
        }
        keys += page.keys.len() as u64;
        if shown.elapsed() >= PROGRESS_EVERY {
            eprintln!(
                "backup: {name}: {keys} key(s) so far, {} bytes written",
                w.written
            );
            shown = Instant::now();
        }
        match page.cursor {
            Some(c) => cursor = c,
            None => break,
        }
    }
    Ok(keys)
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// What a checked backup file holds.
struct Summary {
    created_unix_ms: u64,
    version: u32,
    /// Its users, if it saved them.
    users: Option<Vec<UserRecord>>,
    /// Its tables, with their key counts.
    tables: Vec<(TableHead, u64)>,
    keys: u64,
}

/// Reads `file` whole and checks it: the header first, every line well formed, each
/// table's key count, and the last line's checksum.
fn check(file: &Path) -> anyhow::Result<Summary> {
    let shown = file.display();
    let f = std::fs::File::open(file).with_context(|| format!("cannot open {shown}"))?;
    let mut r = BufReader::new(f);
    let mut line = String::new();
    let mut h = Sha256::new();
    let mut at = 0u64;
    let mut summary: Option<Summary> = None;
    let mut table: Option<(TableHead, u64)> = None;
    loop {
        line.clear();
        let n = r
            .read_line(&mut line)
            .with_context(|| format!("cannot read {shown}"))?;
        if n == 0 {
            bail!(
                "{shown} ends before its last line: the backup was cut short (copy it again, or take a new one)"
            );
        }
        at += 1;
        let parsed: Line = serde_json::from_str(line.trim_end())
            .with_context(|| format!("{shown} line {at} is damaged: not a backup line"))?;
        match (parsed, &mut summary, &mut table) {
            (Line::Meta(Meta::CairnBackup(head)), None, _) => {
                if head.version > VERSION {
                    bail!(
                        "{shown} is of backup format {}, newer than this cairn reads ({VERSION}); restore it with a newer cairn",
                        head.version
                    );
                }
                summary = Some(Summary {
                    created_unix_ms: head.created_unix_ms,
                    version: head.version,
                    users: None,
                    tables: Vec::new(),
                    keys: 0,
                });
            }
            (_, None, _) => {
                bail!("{shown} is not a Cairn backup (its first line is not a backup header)")
            }
            // Right after the header: before any table, and once.
            (Line::Meta(Meta::Users(saved)), Some(s), None)
                if s.users.is_none() && s.tables.is_empty() && at == 2 && s.version >= 2 =>
            {
                let mut users: Vec<UserRecord> = Vec::with_capacity(saved.len());
                for u in saved {
                    let name = u.name.clone();
                    let u = u.record().map_err(|why| {
                        anyhow::anyhow!("{shown} line {at}: user {name:?}: {why}")
                    })?;
                    if users.iter().any(|seen| seen.name == u.name) {
                        bail!(
                            "{shown} line {at}: user {name:?} is in the file twice; the file is damaged"
                        );
                    }
                    if let Some(twin) = users.iter().find(|o| o.token_sha256 == u.token_sha256) {
                        bail!(
                            "{shown} line {at}: users {:?} and {name:?} have one token; the file is damaged",
                            twin.name
                        );
                    }
                    users.push(u);
                }
                s.users = Some(users);
            }
            (Line::Meta(Meta::Table(t)), Some(s), None) => {
                if s.tables.iter().any(|(seen, _)| seen.name == t.name) {
                    bail!(
                        "{shown} line {at}: table {} is in the file twice; the file is damaged",
                        t.name
                    );
                }
                for s in &t.splits {
                    B64.decode(s)
                        .with_context(|| format!("{shown} line {at}: a damaged split key"))?;
                }
                table = Some((t, 0));
            }
            (Line::Row(k, v), Some(_), Some((_, count))) => {
                B64.decode(&k)
                    .and_then(|_| B64.decode(&v))
                    .with_context(|| format!("{shown} line {at}: a damaged row"))?;
                *count += 1;
            }
            (Line::Meta(Meta::TableEnd(e)), Some(s), Some((t, count))) => {
                if e.name != t.name || e.keys != *count {
                    bail!(
                        "{shown} line {at}: table {} should hold {} key(s) and holds {count}; the file is damaged",
                        e.name,
                        e.keys
                    );
                }
                s.keys += *count;
                s.tables.push((t.clone(), *count));
                table = None;
            }
            (Line::Meta(Meta::End(end)), Some(s), None) => {
                let sha = hex(&h.finalize());
                if sha != end.sha256 {
                    bail!(
                        "{shown} is damaged: its checksum is {sha}, and {} was recorded",
                        end.sha256
                    );
                }
                if end.tables != s.tables.len() as u64 || end.keys != s.keys {
                    bail!("{shown} is damaged: its last line's counts do not match its tables");
                }
                let mut rest = [0u8; 1];
                if r.read(&mut rest)? != 0 {
                    bail!("{shown} has bytes after its last line; the file is damaged");
                }
                return summary.context("no header");
            }
            _ => bail!("{shown} line {at} is out of place; the file is damaged"),
        }
        h.update(line.as_bytes());
    }
}

/// Adds the users saved in a backup that the cluster does not have, each with its saved
/// token; a user the cluster has is kept as it is. Every user is checked before the first
/// is added, so that a refusal leaves the cluster's users as they were.
async fn restore_users(client: &Client, users: &[UserRecord]) -> anyhow::Result<()> {
    let cannot = |e: cairn_client::Error| {
        let what = match e.code {
            ErrorCode::PermissionDenied => "restore as an admin",
            ErrorCode::Unavailable => "check that the cluster is up (`cairn admin nodes`)",
            _ => "check that every node runs this version of cairn",
        };
        anyhow::anyhow!(
            "cannot restore the users: {e}; {what}, or pass --no-users to restore the tables alone (nothing was written)"
        )
    };
    let existing = client.user_records().await.map_err(cannot)?;
    let mut to_add = Vec::new();
    let mut kept = Vec::new();
    let mut there = 0;
    // Names, roles and one token per user were checked with the file (`check`).
    for u in users {
        match existing.iter().find(|e| e.name == u.name) {
            Some(e) if e == u => there += 1,
            Some(e) => kept.push(e),
            None => {
                if let Some(other) = existing.iter().find(|e| e.token_sha256 == u.token_sha256) {
                    bail!(
                        "cannot restore user {:?}: the cluster's user {:?} has the same token; pass --no-users to restore the tables alone (nothing was written)",
                        u.name,
                        other.name
                    );
                }
                to_add.push(u);
            }
        }
    }
    for e in &kept {
        eprintln!(
            "restore: user {} exists in the cluster ({}, tables {}); kept as the cluster has it, so its saved role and token do not apply",
            e.name,
            e.role,
            tables_scope(&e.tables)
        );
    }
    for (i, u) in to_add.iter().enumerate() {
        let failed = |e: cairn_client::Error| {
            anyhow::anyhow!(
                "cannot restore user {}: {e}; {i} user(s) before it were added, and no table was written",
                u.name
            )
        };
        match client.restore_user(u).await {
            Ok(()) => {}
            // A retry of an add whose answer was lost finds the user it made.
            Err(e) if e.code == ErrorCode::AlreadyExists => {
                let now = client.user_records().await.map_err(failed)?;
                if !now.contains(u) {
                    return Err(failed(e));
                }
            }
            Err(e) => return Err(failed(e)),
        }
        // Named one by one: a user removed since the backup (say, for a leaked token) is
        // back with that token, and must be removed again.
        eprintln!(
            "restore: user {} added ({}, tables {}), with its saved token",
            u.name,
            u.role,
            tables_scope(&u.tables)
        );
    }
    eprintln!(
        "restore: users: {} added with their saved tokens, {there} already there, {} kept as the cluster has them",
        to_add.len(),
        kept.len()
    );
    Ok(())
}

async fn restore(
    client: &Client,
    file: &Path,
    only: &[String],
    with_users: bool,
    replication: Option<u32>,
) -> anyhow::Result<()> {
    let summary = check(file)?;
    for name in only {
        if !summary.tables.iter().any(|(t, _)| &t.name == name) {
            bail!(
                "{} holds no table {name:?} (`cairn backup inspect {}` lists its tables)",
                file.display(),
                file.display()
            );
        }
    }
    let chosen: Vec<&(TableHead, u64)> = summary
        .tables
        .iter()
        .filter(|(t, _)| only.is_empty() || only.contains(&t.name))
        .collect();
    let existing = client
        .list_tables()
        .await
        .map_err(|e| anyhow::anyhow!("cannot list the tables: {e}"))?;
    for (t, _) in &chosen {
        if existing.iter().any(|e| e.name == t.name) {
            bail!(
                "table {} exists in the cluster; drop it first (`cairn table drop {}`), or restore the other tables with --table NAME for each",
                t.name,
                t.name
            );
        }
    }
    match (&summary.users, with_users) {
        (Some(users), true) => restore_users(client, users).await?,
        (None, true) => eprintln!(
            "restore: {} holds no users (the cluster had none, or it was saved with --table or --no-users, or by a non-admin)",
            file.display()
        ),
        (_, false) => {}
    }
    let f = std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let lines = BufReader::new(f).lines();
    let mut current: Option<(String, u64)> = None;
    let mut done_keys = 0u64;
    let mut shown = Instant::now();
    let mut in_flight = futures::stream::FuturesUnordered::new();
    let mut restored = 0u64;
    // Rows sent of the current table: checked against the count `check` found.
    let mut sent = 0u64;
    let changed = |at: usize| {
        format!(
            "{} line {at}: the file changed after it was checked; restore from a copy that does not change",
            file.display()
        )
    };
    // The table whose rows come now (chosen or not), as `check` saw the file: a file that
    // changed since must not put one table's rows into another.
    let mut open: Option<String> = None;
    let mut last = 0;
    for (at, line) in lines.enumerate() {
        let at = at + 1;
        last = at;
        let line = line.with_context(|| format!("cannot read {}", file.display()))?;
        match serde_json::from_str::<Line>(&line).with_context(|| changed(at))? {
            Line::Meta(Meta::Table(t)) => {
                if open.is_some() {
                    bail!("{}", changed(at));
                }
                open = Some(t.name.clone());
                if !chosen.iter().any(|(c, _)| c.name == t.name) {
                    continue;
                }
                let splits = t
                    .splits
                    .iter()
                    .map(|s| B64.decode(s))
                    .collect::<Result<Vec<_>, _>>()
                    .with_context(|| changed(at))?;
                client
                    .create_table(&t.name, replication.unwrap_or(t.replication), splits)
                    .await.map_err(|e| {
                    anyhow::anyhow!(
                        "cannot create table {}: {e}; {restored} table(s) before it in the file were restored",
                        t.name
                    )
                })?;
                let keys = chosen
                    .iter()
                    .find(|(c, _)| c.name == t.name)
                    .map_or(0, |(_, k)| *k);
                current = Some((t.name, keys));
                done_keys = 0;
                sent = 0;
            }
            Line::Meta(Meta::TableEnd(e)) => {
                if open.take().as_ref() != Some(&e.name) {
                    bail!("{}", changed(at));
                }
                settle(&mut in_flight, &current, &mut done_keys).await?;
                if let Some((name, keys)) = current.take() {
                    if sent != keys {
                        bail!("{}", changed(at));
                    }
                    eprintln!("restore: {name}: {keys} key(s) written");
                    restored += 1;
                }
            }
            Line::Row(k, v) => {
                if open.is_none() {
                    bail!("{}", changed(at));
                }
                let Some((name, keys)) = &current else {
                    continue;
                };
                let (k, v) = B64
                    .decode(k)
                    .and_then(|k| Ok((k, B64.decode(v)?)))
                    .with_context(|| changed(at))?;
                sent += 1;
                let table = name.clone();
                in_flight.push(async move { client.put(&table, &k, &v).await });
                if in_flight.len() >= RESTORE_IN_FLIGHT
                    && let Some(r) = in_flight.next().await
                {
                    put_done(r, &current, done_keys)?;
                    done_keys += 1;
                }
                if shown.elapsed() >= PROGRESS_EVERY {
                    eprintln!("restore: {name}: {done_keys} of {keys} key(s) written");
                    shown = Instant::now();
                }
            }
            Line::Meta(_) => {}
        }
    }
    settle(&mut in_flight, &current, &mut done_keys).await?;
    if open.is_some() || restored != chosen.len() as u64 {
        bail!("{}", changed(last));
    }
    println!(
        "restored {restored} table(s), {} key(s) from {}",
        chosen.iter().map(|(_, k)| k).sum::<u64>(),
        file.display()
    );
    Ok(())
}

/// Waits for every write in flight, failing on the first that failed.
async fn settle<F>(
    in_flight: &mut futures::stream::FuturesUnordered<F>,
    current: &Option<(String, u64)>,
    done: &mut u64,
) -> anyhow::Result<()>
where
    F: std::future::Future<Output = Result<(), cairn_client::Error>>,
{
    while let Some(r) = in_flight.next().await {
        put_done(r, current, *done)?;
        *done += 1;
    }
    Ok(())
}

/// Fails a restore on a write that failed, saying what state it leaves.
fn put_done(
    r: Result<(), cairn_client::Error>,
    current: &Option<(String, u64)>,
    done: u64,
) -> anyhow::Result<()> {
    r.map_err(|e| {
        let name = current.as_ref().map_or("?", |(n, _)| n.as_str());
        anyhow::anyhow!(
            "the restore stopped in table {name} after {done} key(s): {e}; the table is partly written, and the tables after it in the file were not restored: drop it (`cairn table drop {name}`) and restore it and those again (--table NAME for each)"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(keys: &[&str], restart: &str, cursor: Option<&str>, done: bool) -> ExportPage {
        ExportPage {
            partition_done: done,
            keys: keys.iter().map(|k| k.as_bytes().to_vec()).collect(),
            values: keys.iter().map(|k| format!("v{k}").into_bytes()).collect(),
            cursor: cursor.map(|c| c.as_bytes().to_vec()),
            restart: restart.as_bytes().to_vec(),
            partition: 1,
        }
    }

    /// A partition whose view is lost (its node does not answer) after its first page is
    /// read again from its start:
    /// the rows of its first reading are cut from the file, and every key is there once.
    #[tokio::test]
    async fn a_partition_whose_view_is_gone_is_read_again_without_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b");
        let mut w = Writer::new(std::fs::File::create(&path).unwrap());
        w.line(&Line::Meta(Meta::Table(TableHead {
            name: "t".into(),
            replication: 3,
            splits: vec![],
        })))
        .unwrap();
        // Partition A (restart "A") in two pages, partition B (restart "B") in two; the
        // view of B is gone at its second page the first time round.
        let (mut gone_once, mut electing) = (false, true);
        let mut asked = Vec::new();
        let keys = save_rows(&mut w, "t", |cursor| {
            asked.push(String::from_utf8_lossy(&cursor).into_owned());
            let r = match cursor.as_slice() {
                b"" => Ok(page(&["a1", "a2"], "A", Some("a-more"), false)),
                b"a-more" => Ok(page(&["a3"], "A", Some("B"), true)),
                // B's first page, while its leader is being elected: asked again.
                b"B" if electing => {
                    electing = false;
                    Err(cairn_client::Error::new(ErrorCode::Unavailable, "electing"))
                }
                b"B" => Ok(page(&["b1", "b2"], "B", Some("b-more"), false)),
                b"b-more" if !gone_once => {
                    gone_once = true;
                    Err(cairn_client::Error::new(
                        ErrorCode::Unavailable,
                        "node 2 down",
                    ))
                }
                b"b-more" => Ok(page(&["b3"], "B", None, true)),
                other => panic!("unexpected cursor {other:?}"),
            };
            async move { r }
        })
        .await
        .unwrap();
        w.out.flush().unwrap();
        assert_eq!(keys, 6);
        assert_eq!(asked, ["", "a-more", "B", "B", "b-more", "B", "b-more"]);
        let text = std::fs::read_to_string(&path).unwrap();
        let rows: Vec<String> = text
            .lines()
            .skip(1)
            .map(|l| match serde_json::from_str::<Line>(l).unwrap() {
                Line::Row(k, _) => String::from_utf8(B64.decode(k).unwrap()).unwrap(),
                Line::Meta(_) => panic!("a meta line among the rows: {l}"),
            })
            .collect();
        assert_eq!(rows, ["a1", "a2", "a3", "b1", "b2", "b3"]);
        assert_eq!(w.written, text.len() as u64);
        // The checksum kept while writing is the file's, the rows cut out included.
        assert_eq!(w.checksum(), hex(&Sha256::digest(text.as_bytes())));
    }

    /// A view lost again and again fails the backup instead of looping.
    #[tokio::test]
    async fn a_view_lost_every_time_fails_the_backup() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::new(std::fs::File::create(dir.path().join("b")).unwrap());
        let err = save_rows(&mut w, "t", |cursor| {
            let r = if cursor.is_empty() || cursor == b"A" {
                Ok(page(&["a1"], "A", Some("a-more"), false))
            } else {
                Err(cairn_client::Error::new(ErrorCode::NotFound, "view gone"))
            };
            async move { r }
        })
        .await
        .unwrap_err();
        assert!(err.to_string().contains("view gone"), "{err}");
    }

    /// An empty table's two lines.
    fn table(n: &str) -> [Line; 2] {
        let head = Line::Meta(Meta::Table(TableHead {
            name: n.into(),
            replication: 3,
            splits: vec![],
        }));
        let end = Line::Meta(Meta::TableEnd(TableEnd {
            name: n.into(),
            keys: 0,
        }));
        [head, end]
    }

    fn header(version: u32) -> Line {
        Line::Meta(Meta::CairnBackup(Header {
            version,
            created_unix_ms: 1,
        }))
    }

    fn user(name: &str, hash_byte: u8) -> SavedUser {
        SavedUser::of(&UserRecord {
            name: name.into(),
            role: "readwrite".into(),
            tables: "app_".into(),
            token_sha256: [hash_byte; 32],
        })
    }

    /// `check`'s verdict on a file of `lines` (empty tables) closed with a good checksum.
    fn checked(lines: impl IntoIterator<Item = Line>, tables: u64) -> anyhow::Result<Summary> {
        let mut text = String::new();
        for l in lines {
            text += &serde_json::to_string(&l).unwrap();
            text.push('\n');
        }
        let sha256 = hex(&Sha256::digest(text.as_bytes()));
        let end = Line::Meta(Meta::End(End {
            tables,
            keys: 0,
            sha256,
        }));
        text += &serde_json::to_string(&end).unwrap();
        text.push('\n');
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("backup");
        std::fs::write(&path, text).unwrap();
        check(&path)
    }

    fn refusal(r: anyhow::Result<Summary>) -> String {
        r.err().map(|e| e.to_string()).unwrap_or_default()
    }

    /// A file listing one table twice is refused by `check`, even with a good checksum.
    #[test]
    fn a_table_twice_in_one_file_is_refused() {
        let lines = std::iter::once(header(VERSION))
            .chain(table("t"))
            .chain(table("t"));
        let err = refusal(checked(lines, 2));
        assert!(err.contains("twice"), "{err}");
    }

    /// The users line is read back as written, right after the header; a file of version 1
    /// (before users were saved) is still read; a users line anywhere else, a user listed
    /// twice, two users of one token, a damaged token hash or an unknown role is refused.
    #[test]
    fn users_are_read_back_and_only_from_their_place() {
        let users = vec![user("alice", 0xab), user("bob", 0x01)];
        assert_eq!(users[0].token_sha256, B64.encode([0xab; 32]));
        assert_eq!(users[0].clone().record().unwrap().token_sha256, [0xab; 32]);
        let lines = [header(VERSION), Line::Meta(Meta::Users(users.clone()))]
            .into_iter()
            .chain(table("t"));
        let s = checked(lines, 1).unwrap();
        let records: Vec<UserRecord> = users.iter().map(|u| u.clone().record().unwrap()).collect();
        assert_eq!(s.users, Some(records));
        assert_eq!(s.tables.len(), 1);

        let old = std::iter::once(header(1)).chain(table("t"));
        let s = checked(old, 1).unwrap();
        assert_eq!(s.users, None);

        let after_a_table = std::iter::once(header(VERSION))
            .chain(table("t"))
            .chain([Line::Meta(Meta::Users(users.clone()))]);
        assert!(refusal(checked(after_a_table, 1)).contains("out of place"));

        let in_a_version_1_file = [header(1), Line::Meta(Meta::Users(users.clone()))];
        assert!(refusal(checked(in_a_version_1_file, 0)).contains("out of place"));

        let twice = [
            header(VERSION),
            Line::Meta(Meta::Users(users.clone())),
            Line::Meta(Meta::Users(users.clone())),
        ];
        assert!(refusal(checked(twice, 0)).contains("out of place"));

        let same_name = [
            header(VERSION),
            Line::Meta(Meta::Users(vec![user("alice", 1), user("alice", 2)])),
        ];
        assert!(refusal(checked(same_name, 0)).contains("twice"));

        let one_token = [
            header(VERSION),
            Line::Meta(Meta::Users(vec![user("alice", 1), user("bob", 1)])),
        ];
        assert!(refusal(checked(one_token, 0)).contains("have one token"));

        let mut damaged = user("carol", 7);
        damaged.token_sha256.replace_range(0..1, "!");
        let bad_hash = [header(VERSION), Line::Meta(Meta::Users(vec![damaged]))];
        assert!(refusal(checked(bad_hash, 0)).contains("damaged token hash"));
        let mut short = user("dave", 7);
        short.token_sha256 = B64.encode([7u8; 31]);
        assert!(short.record().is_err());
        let mut role = user("erin", 7);
        role.role = "superuser".into();
        assert!(role.record().unwrap_err().contains("superuser"));
    }
}
