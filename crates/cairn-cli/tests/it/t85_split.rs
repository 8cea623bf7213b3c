//! Splits and leader transfers through the admin API, on real processes: under a running
//! workload whose history is checked, and with every kind of bad input.

use crate::cluster::{Cluster, chaos_passed, history_path, list_all, spawn_chaos, wait_for};
use cairn_check::workload::key_name;

use cairn_types::ErrorCode;
use std::time::Duration;

/// Every key of `table`, page by page, as List returns them.
/// On 3 nodes, with the chaos workload running on a one-partition table, the partition is
/// split 10 times at different keys. The history is linearizable, no operation ends without
/// an answer, the table has 11 partitions that tile the key space, and List returns every
/// key once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t85_ten_splits_under_load() {
    let c = Cluster::start(3).await;
    let cl = c.client();
    cl.create_table("splits", 3, vec![]).await.unwrap();
    let path = history_path("t85-splits.jsonl");
    let mut run = spawn_chaos(
        &c.endpoints(),
        &[
            "--table",
            "splits",
            "--duration",
            "20",
            "--clients",
            "6",
            "--keys",
            "24",
            "--seed",
            "85",
            // No operation may end without an answer (below); give each one time for
            // a split's leader change on a busy machine.
            "--op-timeout-ms",
            "15000",
        ],
        &path,
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Split at k002, k004, ..., k020: each lands inside the partition the last one made.
    let mut split_at = Vec::new();
    for i in 1..=10u32 {
        let key = key_name(2 * i);
        let (left, right) = cl.split("splits", key.as_bytes()).await.unwrap();
        assert_eq!(
            right.start,
            key.as_bytes(),
            "the right half starts at the key"
        );
        assert_eq!(left.end.as_deref(), Some(key.as_bytes()));
        assert!(left.epoch.0 >= 2 && right.epoch == left.epoch);
        split_at.push(key.into_bytes());
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    let out = chaos_passed(&mut run, &path).await;
    assert!(
        out.contains(" 0 info"),
        "some operations ended without an answer:\n{out}"
    );

    let t = cl.describe_table("splits").await.unwrap();
    assert_eq!(t.partitions.len(), 11, "{:?}", t.partitions);
    let starts: Vec<Vec<u8>> = t.partitions.iter().map(|p| p.start.clone()).collect();
    let mut want = vec![Vec::new()];
    want.extend(split_at);
    assert_eq!(starts, want);
    for w in t.partitions.windows(2) {
        assert_eq!(w[0].end.as_deref(), Some(w[1].start.as_slice()));
    }
    assert_eq!(t.partitions.last().unwrap().end, None);

    // Keys across every partition: List returns each once, in order.
    for i in 0..240u32 {
        cl.put("splits", format!("x/{}", key_name(i)).as_bytes(), b"v")
            .await
            .unwrap();
        cl.put("splits", format!("{}/x", key_name(i / 10)).as_bytes(), b"v")
            .await
            .unwrap();
    }
    let keys = list_all(&cl, "splits").await;
    assert!(
        keys.windows(2).all(|w| w[0] < w[1]),
        "keys out of order or repeated"
    );
    for i in 0..240u32 {
        for k in [
            format!("x/{}", key_name(i)),
            format!("{}/x", key_name(i / 10)),
        ] {
            assert!(keys.binary_search(&k.into_bytes()).is_ok());
        }
    }
}

/// Leadership moves to the named replica and stays correct for reads and writes; a split
/// at a partition's start, of an unknown table, and transfers to unknown or non-replica
/// nodes get the documented errors and change nothing, over HTTP and gRPC.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t86_transfer_and_bad_admin_input() {
    let c = Cluster::start(4).await;
    let cl = c.client();
    cl.create_table("adm", 3, vec![b"m".to_vec()])
        .await
        .unwrap();
    cl.put("adm", b"a", b"1").await.unwrap();
    let before = cl.describe_table("adm").await.unwrap();
    let p = before.partitions[0].clone();

    // Transfer to each replica in turn; the metadata learns it from heartbeats.
    for &to in &p.replicas {
        cl.transfer_leader(p.id, to).await.unwrap();
        let cl = &cl;
        wait_for(
            Duration::from_secs(30),
            "the leader to be reported",
            || async move {
                let t = cl.describe_table("adm").await.ok()?;
                (t.partitions[0].leader == Some(to)).then_some(())
            },
        )
        .await;
        cl.put("adm", b"a", format!("{to}").as_bytes())
            .await
            .unwrap();
        assert_eq!(
            cl.get("adm", b"a").await.unwrap(),
            Some(format!("{to}").into_bytes())
        );
    }
    // Each transfer is listed among the operations, newest first.
    let listed: Vec<u64> = cl
        .operations()
        .await
        .unwrap()
        .into_iter()
        .filter(|o| o.kind == "transfer" && o.partition == p.id && o.state == "done")
        .map(|o| o.to)
        .collect();
    let mut want = p.replicas.clone();
    want.reverse();
    assert_eq!(listed, want);

    let h = reqwest::Client::new();
    let base = c.http(2);
    let post = |path: &str, body: &str| {
        h.post(format!("{base}/v1/admin/{path}"))
            .body(body.to_string())
            .send()
    };
    let outsider = (1..=4).find(|n| !p.replicas.contains(n)).unwrap();
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "split",
            r#"{"table":"nope","key":"b"}"#.into(),
            404,
            "TABLE_NOT_FOUND",
        ),
        (
            "split",
            r#"{"table":"adm","key":"m"}"#.into(),
            409,
            "CONFLICT",
        ),
        (
            "split",
            r#"{"table":"adm","key":""}"#.into(),
            400,
            "INVALID_ARGUMENT",
        ),
        (
            "split",
            r#"{"table":"adm"}"#.into(),
            400,
            "INVALID_ARGUMENT",
        ),
        (
            "split",
            r#"{"table":"adm","key":"%%","encoding":"base64"}"#.into(),
            400,
            "INVALID_ARGUMENT",
        ),
        (
            "transfer-leader",
            r#"{"partition":9999,"to":1}"#.into(),
            404,
            "NOT_FOUND",
        ),
        (
            "transfer-leader",
            format!(r#"{{"partition":{},"to":77}}"#, p.id),
            404,
            "NOT_FOUND",
        ),
        (
            "transfer-leader",
            format!(r#"{{"partition":{},"to":{outsider}}}"#, p.id),
            409,
            "CONFLICT",
        ),
        (
            "transfer-leader",
            r#"{"partition":"x"}"#.into(),
            400,
            "INVALID_ARGUMENT",
        ),
        (
            "move",
            r#"{"partition":9999,"from":1,"to":2}"#.into(),
            404,
            "NOT_FOUND",
        ),
        (
            "move",
            format!(
                r#"{{"partition":{},"from":{},"to":77}}"#,
                p.id, p.replicas[0]
            ),
            404,
            "NOT_FOUND",
        ),
        (
            "move",
            format!(
                r#"{{"partition":{},"from":{},"to":{}}}"#,
                p.id, p.replicas[0], p.replicas[1]
            ),
            409,
            "CONFLICT",
        ),
        (
            "move",
            format!(
                r#"{{"partition":{},"from":{outsider},"to":{}}}"#,
                p.id, p.replicas[0]
            ),
            409,
            "CONFLICT",
        ),
        (
            "move",
            format!(
                r#"{{"partition":{},"from":{},"to":{}}}"#,
                p.id, p.replicas[0], p.replicas[0]
            ),
            400,
            "INVALID_ARGUMENT",
        ),
        ("move", r#"{"partition":1}"#.into(), 400, "INVALID_ARGUMENT"),
    ];
    for (path, body, status, code) in cases {
        let r = post(path, &body).await.unwrap();
        let got = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert_eq!(got, status, "{path} {body}: {text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"]["code"], code, "{path} {body}: {text}");
    }
    assert_eq!(
        cl.split("adm", b"m").await.unwrap_err().code,
        ErrorCode::Conflict
    );
    assert_eq!(
        cl.split("nope", b"m").await.unwrap_err().code,
        ErrorCode::TableNotFound
    );
    assert_eq!(
        cl.transfer_leader(p.id, outsider).await.unwrap_err().code,
        ErrorCode::Conflict
    );
    assert_eq!(
        cl.transfer_leader(9999, 1).await.unwrap_err().code,
        ErrorCode::NotFound
    );
    // Nothing changed.
    let after = cl.describe_table("adm").await.unwrap();
    let shape = |t: &cairn_client::TableInfo| {
        t.partitions
            .iter()
            .map(|p| {
                (
                    p.id,
                    p.start.clone(),
                    p.end.clone(),
                    p.epoch,
                    p.replicas.clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(shape(&after), shape(&before));

    // A move while another runs on the partition: the first one's target is paused, so the
    // first stays running until it resumes.
    let first = cl
        .move_replica(p.id, p.replicas[0], outsider)
        .await
        .unwrap();
    c.pause(outsider);
    // Through a node that is not paused, with time for a new metadata leader should the
    // paused node have led the metadata group.
    let via = c
        .client_of(p.replicas[1])
        .with_timeout(Duration::from_secs(30));
    let second = via.move_replica(p.id, p.replicas[1], outsider).await;
    c.resume(outsider);
    assert_eq!(second.unwrap_err().code, ErrorCode::Conflict);
    let ops = h
        .get(format!("{base}/v1/admin/operations"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let ops: serde_json::Value = serde_json::from_str(&ops).unwrap();
    assert_eq!(ops["operations"][0]["id"], first.id, "{ops}");
    assert_eq!(ops["operations"][0]["kind"], "move", "{ops}");
    let done = wait_for(Duration::from_secs(60), "the first move to finish", || {
        let cl = &cl;
        async move {
            let o = cl
                .operations()
                .await
                .ok()?
                .into_iter()
                .find(|o| o.id == first.id)?;
            (o.state != "running").then_some(o)
        }
    })
    .await;
    assert_eq!(done.state, "done", "{done:?}");
    let moved = cl.describe_table("adm").await.unwrap();
    assert!(moved.partitions[0].replicas.contains(&outsider));
    assert!(!moved.partitions[0].replicas.contains(&p.replicas[0]));

    // A base64 key with bytes that are not UTF-8 splits over HTTP.
    let r = post(
        "split",
        r#"{"table":"adm","key":"/w==","encoding":"base64"}"#,
    )
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
    let t = cl.describe_table("adm").await.unwrap();
    assert_eq!(t.partitions.len(), 3);
    assert_eq!(t.partitions[2].start, vec![0xff]);
}
