//! `cairn backup`: tables saved to a file and restored with their partitions, each
//! partition read as of one moment, and damaged files refused whole.

use crate::cluster::{Cluster, list_all_values};
use cairn_types::ErrorCode;
use futures::StreamExt;
use std::path::Path;
use std::time::Duration;

/// Runs `cairn backup ARGS` against `c`; answers whether it succeeded, and its output.
async fn backup(c: &Cluster, args: &[&str]) -> (bool, String) {
    backup_as(c, None, args).await
}

/// Runs `cairn backup ARGS` against `c` as the user of `token` (default: root's client
/// certificate on a secure cluster).
async fn backup_as(c: &Cluster, token: Option<&str>, args: &[&str]) -> (bool, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_cairn"));
    cmd.args(["--endpoints", &c.endpoints()])
        .env_remove("CAIRN_TOKEN");
    if let Some(certs) = &c.certs {
        cmd.arg("--certs-dir").arg(certs);
    }
    if let Some(t) = token {
        cmd.args(["--token", t]);
    }
    let run = cmd.arg("backup").args(args).output();
    let run = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("cairn backup finished within two minutes")
        .unwrap();
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    (run.status.success(), out)
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The rows written to table "a": keys in all three partitions, a binary key, values of
/// every byte and length, one empty.
fn rows_of_a() -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut rows: Vec<(Vec<u8>, Vec<u8>)> = (0..600u32)
        .map(|i| {
            let key = format!("{}{i:04}", ['b', 'h', 'q'][i as usize % 3]).into_bytes();
            let value = vec![(i % 256) as u8; (i % 50) as usize];
            (key, value)
        })
        .collect();
    rows.push((b"\xff\x00z".to_vec(), b"\x00\x01\n\"{".to_vec()));
    rows.sort();
    rows
}

async fn write_all(cl: &cairn_client::Client, table: &str, rows: &[(Vec<u8>, Vec<u8>)]) {
    futures::stream::iter(rows)
        .for_each_concurrent(32, |(k, v)| async move {
            cl.put(table, k, v).await.unwrap();
        })
        .await;
}

/// Two tables saved, dropped and restored come back with every key and value and with
/// their partition boundaries and replication; `inspect` says what the file holds; a
/// backup never overwrites a file, and a restore never writes into a table that exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t76_a_backup_restores_its_tables_with_their_partitions() {
    let c = Cluster::start(3).await;
    let cl = c.client();
    cl.create_table("a", 3, vec![b"g".to_vec(), b"p".to_vec()])
        .await
        .unwrap();
    cl.create_table("b", 3, vec![]).await.unwrap();
    let a = rows_of_a();
    let b: Vec<(Vec<u8>, Vec<u8>)> = (0..50u32)
        .map(|i| {
            (
                format!("key{i:02}").into_bytes(),
                format!("v{i}").into_bytes(),
            )
        })
        .collect();
    write_all(&cl, "a", &a).await;
    write_all(&cl, "b", &b).await;

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster.backup");
    let (ok, out) = backup(&c, &["save", path(&file)]).await;
    assert!(ok, "{out}");
    assert!(out.contains("saved 2 table(s), 651 key(s)"), "{out}");
    assert!(!dir.path().join("cluster.backup.partial").exists());

    let (ok, out) = backup(&c, &["inspect", path(&file)]).await;
    assert!(ok, "{out}");
    assert!(out.contains("2 table(s) and 651 key(s)"), "{out}");
    let line = |name: &str| {
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>())
    };
    assert_eq!(line("a"), Some(vec!["601", "3", "3"]), "{out}");
    assert_eq!(line("b"), Some(vec!["50", "1", "3"]), "{out}");

    let (ok, out) = backup(&c, &["save", path(&file)]).await;
    assert!(!ok && out.contains("exists"), "{out}");

    cl.drop_table("a").await.unwrap();
    cl.drop_table("b").await.unwrap();
    let (ok, out) = backup(&c, &["restore", path(&file)]).await;
    assert!(ok, "{out}");
    assert!(out.contains("restored 2 table(s), 651 key(s)"), "{out}");
    assert_eq!(list_all_values(&cl, "a").await, a);
    assert_eq!(list_all_values(&cl, "b").await, b);
    let t = cl.describe_table("a").await.unwrap();
    let starts: Vec<&[u8]> = t.partitions.iter().map(|p| p.start.as_slice()).collect();
    assert_eq!(starts, vec![&b""[..], b"g", b"p"]);
    assert_eq!(t.replication, 3);

    // With another replication (what a one-node playground needs), under the same rows.
    cl.drop_table("b").await.unwrap();
    let (ok, out) = backup(
        &c,
        &["restore", path(&file), "--table", "b", "--replication", "1"],
    )
    .await;
    assert!(ok, "{out}");
    assert!(out.contains("restored 1 table(s), 50 key(s)"), "{out}");
    assert_eq!(cl.describe_table("b").await.unwrap().replication, 1);
    assert_eq!(list_all_values(&cl, "b").await, b);

    // Into an existing table: refused, and nothing written.
    cl.put("b", b"key00", b"changed").await.unwrap();
    let (ok, out) = backup(&c, &["restore", path(&file), "--table", "b"]).await;
    assert!(!ok && out.contains("table b exists"), "{out}");
    assert_eq!(
        cl.get("b", b"key00").await.unwrap(),
        Some(b"changed".to_vec())
    );
}

/// A file cut short, or with one byte changed, is refused whole: no table is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t76_a_damaged_backup_is_refused_whole() {
    let c = Cluster::start(3).await;
    let cl = c.client();
    cl.create_table("d", 3, vec![b"m".to_vec()]).await.unwrap();
    let rows: Vec<(Vec<u8>, Vec<u8>)> = (0..100u32)
        .map(|i| (format!("k{i:03}").into_bytes(), b"value".to_vec()))
        .collect();
    write_all(&cl, "d", &rows).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("d.backup");
    let (ok, out) = backup(&c, &["save", path(&file)]).await;
    assert!(ok, "{out}");
    cl.drop_table("d").await.unwrap();
    let text = std::fs::read_to_string(&file).unwrap();

    // Cut before its last line.
    let cut = dir.path().join("cut.backup");
    let last = text.trim_end().rfind('\n').unwrap();
    std::fs::write(&cut, &text[..=last]).unwrap();
    let (ok, out) = backup(&c, &["restore", path(&cut)]).await;
    assert!(!ok && out.contains("cut short"), "{out}");

    // One value changed ("value" is "dmFsdWU=" in base64; "emFsdWU=" decodes too).
    let changed = dir.path().join("changed.backup");
    let at = text.find("dmFsdWU=").unwrap();
    let mut bytes = text.clone().into_bytes();
    bytes[at] = b'e';
    std::fs::write(&changed, bytes).unwrap();
    let (ok, out) = backup(&c, &["inspect", path(&changed)]).await;
    assert!(!ok && out.contains("checksum"), "{out}");
    let (ok, out) = backup(&c, &["restore", path(&changed)]).await;
    assert!(!ok && out.contains("checksum"), "{out}");

    assert!(
        cl.list_tables()
            .await
            .unwrap()
            .iter()
            .all(|t| t.name != "d"),
        "a refused restore created a table"
    );
    let (ok, out) = backup(&c, &["restore", path(&file)]).await;
    assert!(ok, "{out}");
    assert_eq!(list_all_values(&cl, "d").await, rows);
}

/// A partition is read from the view its first page opened: writes made while the later
/// pages are read do not show. A view read to its end is dropped (its cursor then fails
/// with NOT_FOUND, and the page's restart cursor reads the partition anew), and a cursor
/// of one table is refused for another.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t76_each_partition_is_saved_as_of_one_moment() {
    let c = Cluster::start(3).await;
    let cl = c.client();
    cl.create_table("pit", 3, vec![]).await.unwrap();
    cl.create_table("other", 3, vec![]).await.unwrap();
    let old: Vec<(Vec<u8>, Vec<u8>)> = (0..200u32)
        .map(|i| (format!("k{i:03}").into_bytes(), b"old".to_vec()))
        .collect();
    write_all(&cl, "pit", &old).await;

    // Pages of about 100 bytes: 15 rows of 7 bytes each.
    let first = cl.export("pit", &[], 100).await.unwrap();
    let mut cursor = first.cursor.clone().expect("more pages after the first");
    assert!(
        first.keys.len() < 200,
        "{} rows in one page",
        first.keys.len()
    );

    let new: Vec<(Vec<u8>, Vec<u8>)> = old
        .iter()
        .map(|(k, _)| (k.clone(), b"new".to_vec()))
        .collect();
    write_all(&cl, "pit", &new).await;
    cl.delete("pit", b"k150").await.unwrap();
    cl.put("pit", b"k100a", b"new").await.unwrap();

    let mut rows: Vec<(Vec<u8>, Vec<u8>)> = first.keys.into_iter().zip(first.values).collect();
    let mut pages = 1;
    loop {
        let page = cl.export("pit", &cursor, 100).await.unwrap();
        assert_eq!(page.partition, first.partition);
        assert_eq!(page.restart, first.restart);
        rows.extend(page.keys.into_iter().zip(page.values));
        pages += 1;
        match page.cursor {
            Some(next) => cursor = next,
            None => break,
        }
        assert!(pages < 1000, "the export does not end");
    }
    assert!(pages > 2, "{pages} pages");
    let later = rows.iter().filter(|(_, v)| v.as_slice() != b"old").count();
    assert_eq!(
        later, 0,
        "the export saw {later} writes made after its first page"
    );
    let keys = |r: &[(Vec<u8>, Vec<u8>)]| {
        r.iter()
            .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
            .collect::<Vec<_>>()
            .join(",")
    };
    assert!(
        rows == old,
        "keys differ from the first page's moment:\n{}",
        keys(&rows)
    );

    // The view was dropped after its last page.
    let first_cursor = cl.export("pit", &[], 100).await.unwrap();
    let gone = cl
        .export("pit", first.cursor.as_deref().unwrap(), 100)
        .await
        .unwrap_err();
    assert_eq!(gone.code, ErrorCode::NotFound, "{gone}");
    let again = cl.export("pit", &first.restart, 100).await.unwrap();
    assert_eq!(again.keys.first().map(Vec::as_slice), Some(&b"k000"[..]));
    assert_eq!(again.values.first().map(Vec::as_slice), Some(&b"new"[..]));
    assert_eq!(
        first_cursor.values.first().map(Vec::as_slice),
        Some(&b"new"[..])
    );

    let refused = cl
        .export("other", first_cursor.cursor.as_deref().unwrap(), 100)
        .await
        .unwrap_err();
    assert_eq!(refused.code, ErrorCode::InvalidArgument, "{refused}");
}

/// The node holding a partition's view is killed between two pages: the next page fails
/// UNAVAILABLE (what `cairn backup save` reads the partition again on), and the page's
/// restart cursor reads the whole partition from the new leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t76_a_partition_whose_view_died_is_read_again_from_the_new_leader() {
    let mut c = Cluster::start(3).await;
    let cl = c.client();
    cl.create_table("crash", 3, vec![]).await.unwrap();
    let rows: Vec<(Vec<u8>, Vec<u8>)> = (0..100u32)
        .map(|i| (format!("k{i:03}").into_bytes(), b"v".to_vec()))
        .collect();
    write_all(&cl, "crash", &rows).await;

    let first = cl.export("crash", &[], 50).await.unwrap();
    let cursor = first.cursor.clone().unwrap();
    let Ok(cairn_router::ExportCursor::Continue { node, .. }) =
        cairn_router::ExportCursor::decode(&cursor)
    else {
        panic!("the first page of a partition of 100 rows is not its last");
    };
    c.kill9(node.0);
    let survivor = c.other_than(node.0);
    // NOT_FOUND at once (the view is gone with its node), not UNAVAILABLE retried until the
    // client's timeout.
    let err = c
        .client_of(survivor)
        .with_timeout(Duration::from_secs(30))
        .export("crash", &cursor, 50)
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound, "{err}");
    assert!(err.message.contains("restart cursor"), "{err}");

    let mut got = Vec::new();
    let mut at = first.restart.clone();
    loop {
        let page = c
            .client_of(survivor)
            .with_timeout(Duration::from_secs(30))
            .export("crash", &at, 50)
            .await
            .unwrap();
        got.extend(page.keys.into_iter().zip(page.values));
        match page.cursor {
            Some(next) => at = next,
            None => break,
        }
    }
    assert_eq!(got, rows);
}

/// A backup of every table taken by an admin carries the users: restored into a new
/// cluster (its own CA), each user's old token works there with its old role; a user the
/// new cluster has is kept as it is; a non-admin can neither save nor restore users, and a
/// restore refused for that writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t76_a_cluster_backup_brings_its_users_back() {
    let old = Cluster::start_secure(3).await;
    let root = old.client();
    root.create_table("app_t", 3, vec![]).await.unwrap();
    root.create_table("other", 3, vec![]).await.unwrap();
    let rows: Vec<(Vec<u8>, Vec<u8>)> = (0..20u32)
        .map(|i| {
            (
                format!("k{i:02}").into_bytes(),
                format!("v{i}").into_bytes(),
            )
        })
        .collect();
    write_all(&root, "app_t", &rows).await;
    root.put("other", b"k", b"o").await.unwrap();
    let alice = root.add_user("alice", "readwrite", "app_").await.unwrap();
    let ops = root.add_user("ops", "readonly", "").await.unwrap();
    let boss = root.add_user("boss", "admin", "").await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    // A readonly user reads every table but not the users: the tables are saved alone.
    let tables_only = dir.path().join("tables-only.backup");
    let (ok, out) = backup_as(&old, Some(&ops), &["save", path(&tables_only)]).await;
    assert!(ok, "{out}");
    assert!(out.contains("users are not saved"), "{out}");
    assert!(out.contains("saved 2 table(s), 21 key(s) to"), "{out}");
    let (ok, out) = backup(&old, &["inspect", path(&tables_only)]).await;
    assert!(ok && out.contains("users: none saved"), "{out}");

    let file = dir.path().join("cluster.backup");
    let (ok, out) = backup(&old, &["save", path(&file)]).await;
    assert!(ok, "{out}");
    assert!(
        out.contains("saved 2 table(s), 21 key(s), 3 user(s)"),
        "{out}"
    );
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        !text.contains(&alice) && !text.contains(&ops) && !text.contains(&boss),
        "a token itself is in the file"
    );
    let (ok, out) = backup(&old, &["inspect", path(&file)]).await;
    assert!(ok && out.contains("users: 3"), "{out}");
    let alice_line = out.lines().find(|l| l.trim_start().starts_with("alice"));
    assert_eq!(
        alice_line.map(|l| l.split_whitespace().collect::<Vec<_>>()),
        Some(vec!["alice", "readwrite", "app_*"]),
        "{out}"
    );

    // A new cluster, with a user "ops" of its own (another role, another token).
    let new = Cluster::start_secure(3).await;
    let new_root = new.client();
    let new_ops = new_root.add_user("ops", "readonly", "").await.unwrap();
    // Its readonly user may not add users: refused, and no table written.
    let (ok, out) = backup_as(&new, Some(&new_ops), &["restore", path(&file)]).await;
    assert!(!ok && out.contains("cannot restore the users"), "{out}");
    assert!(out.contains("--no-users"), "{out}");
    assert!(new_root.list_tables().await.unwrap().is_empty());
    // A table of the file exists: refused before any user is added.
    new_root.create_table("other", 3, vec![]).await.unwrap();
    let (ok, out) = backup(&new, &["restore", path(&file)]).await;
    assert!(!ok && out.contains("table other exists"), "{out}");
    let users = new_root.list_users().await.unwrap();
    assert_eq!(users.len(), 1, "{users:?}");
    new_root.drop_table("other").await.unwrap();

    let (ok, out) = backup(&new, &["restore", path(&file)]).await;
    assert!(ok, "{out}");
    assert!(
        out.contains("users: 2 added with their saved tokens, 0 already there, 1 kept"),
        "{out}"
    );
    assert!(out.contains("user ops exists in the cluster"), "{out}");
    assert!(
        out.contains("user alice added (readwrite, tables app_*)"),
        "{out}"
    );
    assert!(out.contains("restored 2 table(s), 21 key(s)"), "{out}");

    // alice's old token works here, with her old role: her tables, and no others.
    let alice_new = new.token_client(Some(&alice));
    assert_eq!(list_all_values(&alice_new, "app_t").await, rows);
    alice_new.put("app_t", b"k00", b"new").await.unwrap();
    let e = alice_new.get("other", b"k").await.unwrap_err();
    assert_eq!(e.code, ErrorCode::PermissionDenied, "{e}");
    // boss is an admin here too.
    let listed = new.token_client(Some(&boss)).list_users().await.unwrap();
    let mut names: Vec<&str> = listed.iter().map(|(n, _, _)| n.as_str()).collect();
    names.sort();
    assert_eq!(names, ["alice", "boss", "ops"]);
    // ops is the new cluster's: its old token is refused, its new one still reads.
    let e = new
        .token_client(Some(&ops))
        .get("other", b"k")
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Unauthenticated, "{e}");
    assert_eq!(
        new.token_client(Some(&new_ops))
            .get("other", b"k")
            .await
            .unwrap(),
        Some(b"o".to_vec())
    );

    // Restored again (tables dropped): the users are all there already.
    new_root.drop_table("app_t").await.unwrap();
    new_root.drop_table("other").await.unwrap();
    let (ok, out) = backup(&new, &["restore", path(&file)]).await;
    assert!(ok, "{out}");
    assert!(
        out.contains("users: 0 added with their saved tokens, 2 already there, 1 kept"),
        "{out}"
    );

    // Users with their token hashes are for admins only, and no two users share a token.
    let e = alice_new.user_records().await.unwrap_err();
    assert_eq!(e.code, ErrorCode::PermissionDenied, "{e}");
    let records = root.user_records().await.unwrap();
    let twin = cairn_client::UserRecord {
        name: "twin".into(),
        ..records.iter().find(|u| u.name == "alice").unwrap().clone()
    };
    let e = root.restore_user(&twin).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::AlreadyExists, "{e}");
    assert!(e.message.contains("alice"), "{e}");
}
