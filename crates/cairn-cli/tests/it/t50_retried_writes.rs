use crate::cluster::{Cluster, scrape, value, wait_for};
use crate::t87_moves::{finished, partition, wait_gone};
use cairn_proto::v1::{
    CreateTableRequest, DropTableRequest, GetRequest, PutRequest, RequestId, kv_client::KvClient,
};
use cairn_types::ErrorCode;
use std::time::Duration;

fn put(key: &[u8], value: &[u8], seq: u64, first_incomplete: u64) -> PutRequest {
    PutRequest {
        table: "r".into(),
        key: key.to_vec(),
        value: value.to_vec(),
        request_id: Some(RequestId {
            client: 0xC0FFEE,
            seq,
            first_incomplete,
        }),
        timeout_ms: 0,
    }
}

/// A write retried after a timeout is applied once: a late copy of an applied write,
/// arriving after a newer write to the same key, does not overwrite the newer value,
/// whichever node it arrives through.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t50_late_retry_does_not_overwrite() {
    let c = Cluster::start(3).await;
    c.client().create_table("r", 3, vec![]).await.unwrap();
    // Led before write 1, whose answer goes unread: were it refused for want of a leader,
    // its retry below would be a first write, not a late copy.
    c.leader_of("r").await;
    let mut n1 = KvClient::connect(format!("http://{}", c.nodes[0].grpc))
        .await
        .unwrap();
    let mut n3 = KvClient::connect(format!("http://{}", c.nodes[2].grpc))
        .await
        .unwrap();

    // Write 1 is applied, but its answer is lost to the client (as after a timeout): the
    // client only knows it may or may not have happened.
    let _lost_answer = n1.put(put(b"k", b"old", 1, 1)).await;
    // The client, still waiting on write 1, issues write 2 (newer value).
    n1.put(put(b"k", b"new", 2, 1)).await.unwrap();
    // Now the client retries write 1, through another node.
    n3.put(put(b"k", b"old", 1, 1)).await.unwrap();
    let get = |mut c: KvClient<tonic::transport::Channel>| async move {
        c.get(GetRequest {
            table: "r".into(),
            key: b"k".to_vec(),
            consistency: 0,
            timeout_ms: 0,
        })
        .await
        .unwrap()
        .into_inner()
    };
    assert_eq!(get(n1.clone()).await.value, b"new");

    // Once the client reports seq 1 answered (first_incomplete = 3), an even later copy is
    // refused as stale, too.
    n1.put(put(b"k2", b"x", 3, 3)).await.unwrap();
    n3.put(put(b"k", b"old", 1, 1)).await.unwrap();
    assert_eq!(get(n3.clone()).await.value, b"new");
}

/// Sum of `cairn_duplicate_writes_total` reported by node `id`.
async fn duplicates(c: &Cluster, id: u64) -> u64 {
    let t = scrape(c, id).await.expect("metrics");
    value(&t, "cairn_duplicate_writes_total", &[]).expect("the duplicates counter") as u64
}

/// Sum of `cairn_duplicate_writes_total` over every node.
async fn all_duplicates(c: &Cluster) -> u64 {
    let mut n = 0;
    for id in 1..=c.nodes.len() as u64 {
        n += duplicates(c, id).await;
    }
    n
}

/// A write whose answer is lost (forced by fault injection on every node) is retried by
/// the client with the same request id and applied once: the replicas recognise the retry,
/// and a later write is not undone by it. `cairn_duplicate_writes_total` counts them, and
/// as a counter it does not go back when the replica that counted them moves away.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t51_client_retry_after_lost_answer_applies_once() {
    let mut c = Cluster::start_with(3, &["--fault-lose-write-replies", "1"]).await;
    let cl = c.client();
    cl.create_table("r", 3, vec![]).await.unwrap();
    let before = all_duplicates(&c).await;
    assert_eq!(before, 0);
    // The first write through each node has its answer dropped after it was applied; the
    // client sees UNAVAILABLE, retries elsewhere, and finally gets the answer.
    cl.put("r", b"k", b"first").await.unwrap();
    cl.put("r", b"k", b"second").await.unwrap();
    cl.put("r", b"k", b"third").await.unwrap();
    assert_eq!(cl.get("r", b"k").await.unwrap(), Some(b"third".to_vec()));
    // Every replica applied each retried copy as a duplicate, not as a write. A follower
    // applies after the leader has answered, so its count may trail for a moment.
    for id in 1..=3 {
        wait_for(
            Duration::from_secs(10),
            &format!("node {id} to count a duplicate"),
            async || (duplicates(&c, id).await >= 1).then_some(()),
        )
        .await;
    }

    let counted = duplicates(&c, 1).await;
    let spare = c.join();
    c.wait_live(4).await;
    let p = partition(&cl, "r").await;
    let op = cl.move_replica(p.id, 1, spare).await.unwrap();
    assert_eq!(
        finished(&cl, op.id, Duration::from_secs(60)).await.state,
        "done"
    );
    let table = cl.describe_table("r").await.unwrap().id;
    wait_gone(&c, 1, table, p.id).await;
    assert!(
        duplicates(&c, 1).await >= counted,
        "the counter went back from {counted} when node 1's replica moved away"
    );
    assert_eq!(cl.get("r", b"k").await.unwrap(), Some(b"third".to_vec()));
}

/// The wall clock of node `id` as its HTTP server reports it (the `Date` header), in
/// seconds since the Unix epoch.
async fn node_wall_clock(c: &Cluster, id: u64) -> i64 {
    let r = reqwest::get(format!("{}/health", c.http(id)))
        .await
        .unwrap();
    let date = r.headers()["date"].to_str().unwrap().to_string();
    // "Tue, 01 Dec 2026 13:05:00 GMT"
    let f: Vec<&str> = date.split([' ', ':']).collect();
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| *m == f[2])
    .unwrap() as i64
        + 1;
    let (y, d): (i64, i64) = (f[3].parse().unwrap(), f[1].parse().unwrap());
    let (h, mi, s): (i64, i64, i64) = (
        f[4].parse().unwrap(),
        f[5].parse().unwrap(),
        f[6].parse().unwrap(),
    );
    // Days from civil (Howard Hinnant's algorithm).
    let (yy, mm) = if month <= 2 {
        (y - 1, month + 9)
    } else {
        (y, month - 3)
    };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let doy = (153 * mm + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    days * 86400 + h * 3600 + mi * 60 + s
}

/// A leader whose wall clock jumps forward by hours (and back) does not expire the write
/// sessions of clients still retrying: a late copy of an applied write is recognised after
/// the jump, and does not undo the newer value. Sessions expire by the group's own time,
/// carried in the log, which no wall clock moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t52_retry_after_leader_wall_clock_jump_applies_once() {
    let c = Cluster::start_faketime(3).await;
    let cl = c.client();
    cl.create_table("r", 3, vec![]).await.unwrap();
    let leader = wait_for(Duration::from_secs(20), "a leader of table r", || async {
        let t = cl.partitions("r").await.ok()?;
        t.iter().flat_map(|(_, ps)| ps).find_map(|p| p.leader)
    })
    .await;
    let mut kv = KvClient::connect(format!("http://{}", c.nodes[0].grpc))
        .await
        .unwrap();
    let get = |mut k: KvClient<tonic::transport::Channel>, key: &'static [u8]| async move {
        k.get(GetRequest {
            table: "r".into(),
            key: key.to_vec(),
            consistency: 0,
            timeout_ms: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .value
    };

    // Write 1 is applied but the client never heard; another client then writes newer.
    kv.put(put(b"k", b"old", 1, 1)).await.unwrap();
    cl.put("r", b"k", b"new").await.unwrap();

    for (offset, hours) in [("+5h", 5), ("+0", 0)] {
        // The leader's wall clock jumps; its monotonic clock does not. libfaketime re-reads
        // the offset at every clock reading, so the next request already sees it.
        c.set_clock(leader, offset);
        if hours > 0 {
            // Proof that the node's clock really moved (hyper's `Date` header; it is cached
            // until the clock passes its next second, so only a forward jump shows there).
            let skew = wait_for(
                Duration::from_secs(10),
                "the leader's clock to move",
                || async {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_secs() as i64;
                    let skew = node_wall_clock(&c, leader).await - now;
                    ((skew - hours * 3600).abs() < 120).then_some(skew)
                },
            )
            .await;
            eprintln!("node {leader}'s wall clock is {skew} s ahead");
        }
        // Writes from other clients go on through the jumped leader (each one would have
        // expired every session older than 10 minutes by the old wall-clock rule).
        for i in 0..20u32 {
            cl.put("r", format!("other-{i}").as_bytes(), b"x")
                .await
                .unwrap();
        }
        // The late copy of write 1 arrives: recognised, not applied again.
        let before = all_duplicates(&c).await;
        kv.put(put(b"k", b"old", 1, 1)).await.unwrap();
        assert_eq!(
            get(kv.clone(), b"k").await,
            b"new",
            "a retried write applied twice after the leader's wall clock moved {offset}"
        );
        // Counted by whichever node led when it came (the hint may lag a change).
        let what = format!("the retry to be recognised after the leader's clock moved {offset}");
        wait_for(Duration::from_secs(10), &what, || async {
            (all_duplicates(&c).await > before).then_some(())
        })
        .await;
    }
    // The client's later writes still work, and are also applied once.
    kv.put(put(b"k", b"third", 2, 2)).await.unwrap();
    cl.put("r", b"k", b"fourth").await.unwrap();
    kv.put(put(b"k", b"third", 2, 2)).await.unwrap();
    assert_eq!(get(kv.clone(), b"k").await, b"fourth");
}

/// One curl call: its status, its body and what it said on stderr (`-v`: its retries).
fn curl(args: &[&str]) -> (u16, String, String) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "-v", "--max-time", "30", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl is installed (scripts/test.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (code.trim().parse().unwrap_or(0), body.to_string(), stderr)
}

/// `curl` retries of an HTTP PUT carrying one `Idempotency-Key` apply once: the first
/// attempt is applied but its answer is lost (fault injection), curl retries on the 503,
/// and the replicas take the retry for a duplicate; a late copy of it, sent after a newer
/// write and through another node, does not overwrite the newer value. Without the header
/// the same late copy does (what the header is for). A retried CreateTable with a key is
/// answered the table its first attempt made.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t53_http_retries_with_one_idempotency_key_apply_once() {
    let c = Cluster::start_with(3, &["--fault-lose-write-replies", "1"]).await;
    let create = |node: u64, key: &str| {
        curl(&[
            "-X",
            "POST",
            "-H",
            &format!("Idempotency-Key: {key}"),
            "--data-binary",
            r#"{"name":"h","split_keys":["m"]}"#,
            &format!("{}/v1/tables", c.http(node)),
        ])
    };
    let (code, first, err) = create(1, "create-0001-of-t53");
    assert_eq!(code, 201, "{first}\n{err}");
    let (code, again, err) = create(2, "create-0001-of-t53");
    assert_eq!(code, 201, "a retried create was refused: {again}\n{err}");
    let id = |body: &str| serde_json::from_str::<serde_json::Value>(body).unwrap()["id"].clone();
    assert_eq!(id(&first), id(&again), "the retry made another table");
    let (code, body, _) = create(1, "create-0002-of-t53");
    assert_eq!(code, 409, "another request made a second table h: {body}");

    let url = |node: u64, key: &str| format!("{}/v1/tables/h/keys/{key}", c.http(node));
    let put = |node: u64, key: &str, value: &str, idem: Option<&str>| {
        let header = idem.map(|k| format!("Idempotency-Key: {k}"));
        let mut args = vec!["-X", "PUT", "--data-binary", value];
        args.extend(["--retry", "5", "--retry-all-errors", "--retry-delay", "1"]);
        if let Some(h) = &header {
            args.extend(["-H", h.as_str()]);
        }
        let u = url(node, key);
        args.push(&u);
        curl(&args)
    };
    let get = |node: u64, key: &str| curl(&[&url(node, key)]).1;

    // The first write through node 1 is applied and its answer dropped: curl sees 503,
    // retries, and the retry is recognised as the write already applied.
    let before = all_duplicates(&c).await;
    let (code, body, err) = put(1, "a", "first", Some("write-0001-of-t53"));
    assert_eq!(code, 204, "{body}\n{err}");
    // curl -v shows each attempt: the 503, then the same PUT again.
    assert!(
        err.contains("< HTTP/1.1 503") && err.matches("> PUT ").count() >= 2,
        "curl did not retry:\n{err}"
    );
    assert_eq!(get(2, "a"), "first");
    assert!(
        all_duplicates(&c).await > before,
        "no replica recognised the retry"
    );

    // A newer write, then a late copy of the first through another node: still the newer.
    let (code, body, _) = put(2, "a", "second", Some("write-0002-of-t53"));
    assert_eq!(code, 204, "{body}");
    let before = all_duplicates(&c).await;
    let (code, body, _) = put(3, "a", "first", Some("write-0001-of-t53"));
    assert_eq!(
        code, 204,
        "the late retry should be answered as the first attempt: {body}"
    );
    assert_eq!(
        get(1, "a"),
        "second",
        "a late retry overwrote a newer value"
    );
    assert!(
        all_duplicates(&c).await > before,
        "the late retry was not recognised"
    );

    // The same key on a different request is not taken for a retry of the first.
    let (code, _, _) = put(1, "b", "other", Some("write-0001-of-t53"));
    assert_eq!(code, 204);
    assert_eq!(get(1, "b"), "other");

    // Without the header, a late copy is a new write: it overwrites.
    let (code, _, _) = put(3, "a", "first", None);
    assert_eq!(code, 204);
    assert_eq!(get(1, "a"), "first");

    // A malformed key is refused before anything is written.
    for bad in ["k".repeat(300), "short".to_string()] {
        let (code, body, _) = put(1, "c", "x", Some(&bad));
        assert_eq!(code, 400, "{body}");
        assert!(body.contains("Idempotency-Key"), "{body}");
    }
    let (code, _, _) = curl(&[&url(1, "c")]);
    assert_eq!(code, 404, "a refused write changed something");
}

/// A DropTable whose answer is lost after the table was dropped (fault injection) is
/// retried by the client with the table's id, and the metadata recognises its own drop:
/// success, not TABLE_NOT_FOUND. A table of the same name can be made again at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t54_a_retried_drop_table_whose_answer_was_lost_succeeds() {
    let c = Cluster::start_with(3, &["--fault-lose-write-replies", "1"]).await;
    let cl = c.client();
    cl.create_table("gone", 3, vec![b"m".to_vec()])
        .await
        .unwrap();
    cl.drop_table("gone")
        .await
        .expect("the drop happened; its retry must not report TABLE_NOT_FOUND");
    let err = cl
        .describe_table("gone")
        .await
        .expect_err("the table is gone");
    assert_eq!(err.code, ErrorCode::TableNotFound, "{err}");
    // A drop of a table that never was is still refused.
    let err = cl.drop_table("never").await.expect_err("no such table");
    assert_eq!(err.code, ErrorCode::TableNotFound, "{err}");
    cl.create_table("gone", 3, vec![]).await.unwrap();
    cl.put("gone", b"k", b"v").await.unwrap();
    assert_eq!(cl.get("gone", b"k").await.unwrap(), Some(b"v".to_vec()));
}

/// A late retry of a DropTable (it carries the id of the table it meant, as the client
/// sends it) arriving after the table was made again under its name leaves the new table
/// and its data alone, and answers success (the table it meant is gone), over gRPC and
/// over HTTP (`?id=`). A drop naming an id the table does not have is refused, dropping
/// nothing; with the right id it drops the table. A late retry of a CreateTable whose
/// table was dropped since does not make it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t55_a_late_drop_retry_spares_the_table_made_again() {
    let c = Cluster::start(3).await;
    let cl = c.client();
    cl.create_table("d", 3, vec![]).await.unwrap();
    let first = cl.describe_table("d").await.unwrap().id;
    cl.drop_table("d").await.unwrap();
    cl.create_table("d", 3, vec![b"m".to_vec()]).await.unwrap();
    let again = cl.describe_table("d").await.unwrap().id;
    assert_ne!(again, first, "table ids are never reused");
    cl.put("d", b"k", b"kept").await.unwrap();
    cl.put("d", b"z", b"kept too").await.unwrap();
    let other = {
        cl.create_table("o", 3, vec![]).await.unwrap();
        cl.describe_table("o").await.unwrap().id
    };

    let mut kv = KvClient::connect(format!("http://{}", c.nodes[1].grpc))
        .await
        .unwrap();
    let drop = |table_id: u64| DropTableRequest {
        name: "d".into(),
        table_id,
    };
    // The late retry through gRPC and through HTTP: both succeed, neither drops "d".
    kv.drop_table(drop(first))
        .await
        .expect("a retry of a drop that happened succeeds");
    let (code, body, _) = curl(&[
        "-X",
        "DELETE",
        &format!("{}/v1/tables/d?id={first}", c.http(3)),
    ]);
    assert_eq!(code, 204, "{body}");
    for k in [&b"k"[..], b"z"] {
        assert!(
            cl.get("d", k).await.unwrap().is_some(),
            "the table made again lost {}",
            String::from_utf8_lossy(k)
        );
    }
    // Another table's id, live or dropped, or one never handed out: refused, nothing
    // dropped.
    cl.create_table("gone", 3, vec![]).await.unwrap();
    let gone = cl.describe_table("gone").await.unwrap().id;
    cl.drop_table("gone").await.unwrap();
    for wrong in [other, gone, 1_000_000] {
        let err = kv.drop_table(drop(wrong)).await.expect_err("the wrong id");
        assert_eq!(err.code(), tonic::Code::NotFound, "{err}");
        let says = format!("has id {again}, not {wrong}; nothing was dropped");
        assert!(err.message().contains(&says), "{err}");
    }
    let (code, body, _) = curl(&["-X", "DELETE", &format!("{}/v1/tables/d?id=x", c.http(1))]);
    assert_eq!(code, 400, "{body}");
    assert_eq!(cl.describe_table("d").await.unwrap().id, again);
    assert_eq!(cl.describe_table("o").await.unwrap().id, other);
    // The right id drops it; the drops are in the operations; a drop by name alone of a
    // table not there still fails.
    kv.drop_table(drop(again)).await.unwrap();
    let ops = cl.operations().await.unwrap();
    let drops = ops.iter().filter(|o| o.kind == "drop").count();
    assert_eq!(drops, 3, "{ops:?}");
    let err = cl.describe_table("d").await.expect_err("dropped");
    assert_eq!(err.code, ErrorCode::TableNotFound, "{err}");
    let err = cl.drop_table("d").await.expect_err("no such table");
    assert_eq!(err.code, ErrorCode::TableNotFound, "{err}");

    // A late retry of the CreateTable that made a table dropped since does not make it
    // again: it fails, saying so.
    let create = CreateTableRequest {
        name: "c".into(),
        replication: 3,
        split_keys: vec![],
        request_id: 77,
    };
    kv.create_table(create.clone()).await.unwrap();
    cl.drop_table("c").await.unwrap();
    let err = kv
        .create_table(create)
        .await
        .expect_err("made once, dropped since");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    assert!(err.message().contains("dropped since"), "{err}");
    let err = cl.describe_table("c").await.expect_err("not made again");
    assert_eq!(err.code, ErrorCode::TableNotFound, "{err}");
}
