use crate::cluster::{Cluster, wait_for};
use cairn_client::ListOptions;
use cairn_types::ErrorCode;
use std::time::Duration;

async fn list_all(c: &cairn_client::Client, mut opts: ListOptions) -> Vec<Vec<u8>> {
    let mut keys = Vec::new();
    loop {
        let page = c.list("t", &opts).await.unwrap();
        keys.extend(page.keys);
        match page.cursor {
            Some(cur) => opts.cursor = cur,
            None => return keys,
        }
    }
}

fn key(i: usize) -> Vec<u8> {
    format!("k{i:04}").into_bytes()
}

/// A 3-node cluster serves a 3-partition table through every node: values read back, List
/// walks partitions in byte order with cursors, deletes disappear, and DeleteTable leaves
/// no key of the table in any node's engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t10_three_partitions_put_get_list_delete_drop() {
    let c = Cluster::start(3).await;
    let any = c.client();
    let t = any
        .create_table("t", 3, vec![key(333), key(666)])
        .await
        .unwrap();
    assert_eq!(t.partitions.len(), 3);
    let partition_ids: Vec<u64> = t.partitions.iter().map(|p| p.id).collect();
    for p in &t.partitions {
        assert_eq!(p.replicas.len(), 3);
    }

    // 1,000 puts spread over the three nodes, 8 writers at a time.
    let clients: Vec<_> = (1..=3).map(|i| c.client_of(i)).collect();
    let mut next = 0usize;
    while next < 1000 {
        let batch: Vec<_> = (next..(next + 8).min(1000))
            .map(|i| {
                let cl = &clients[i % 3];
                async move { cl.put("t", &key(i), format!("v{i}").as_bytes()).await }
            })
            .collect();
        for r in futures::future::join_all(batch).await {
            r.unwrap();
        }
        next += 8;
    }

    for i in 0..1000 {
        let got = clients[(i + 1) % 3].get("t", &key(i)).await.unwrap();
        assert_eq!(got, Some(format!("v{i}").into_bytes()), "key {i}");
    }

    // Pages of 100 with cursors cover every key once, in byte order.
    let mut seen = Vec::new();
    let mut opts = ListOptions {
        limit: 100,
        values: true,
        ..Default::default()
    };
    let mut pages = 0;
    loop {
        let page = clients[pages % 3].list("t", &opts).await.unwrap();
        assert!(page.keys.len() <= 100);
        for (k, v) in page.keys.iter().zip(&page.values) {
            let i: usize = std::str::from_utf8(&k[1..]).unwrap().parse().unwrap();
            assert_eq!(v, format!("v{i}").as_bytes());
        }
        seen.extend(page.keys);
        pages += 1;
        match page.cursor {
            Some(cur) => opts.cursor = cur,
            None => break,
        }
    }
    // Pages stop at the two partition boundaries: 4 + 4 + 4 pages of at most 100.
    assert_eq!(pages, 12);
    assert_eq!(seen, (0..1000).map(key).collect::<Vec<_>>());

    // Deletes vanish from get and list.
    for i in (0..1000).step_by(10) {
        clients[i % 3].delete("t", &key(i)).await.unwrap();
    }
    for i in (0..1000).step_by(10) {
        assert_eq!(any.get("t", &key(i)).await.unwrap(), None);
    }
    let all = list_all(
        &any,
        ListOptions {
            limit: 10_000,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(all.len(), 900);
    assert!(all.windows(2).all(|w| w[0] < w[1]));
    let prefixed = list_all(
        &any,
        ListOptions {
            prefix: b"k09".to_vec(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(prefixed.len(), 90);

    // Large values: a page ends after about 4 MiB whatever its limit (four values of the
    // largest size), with a cursor to the rest; a page of keys alone is not cut short.
    let big = |i: u8| vec![i; 1 << 20];
    for i in 0..6u8 {
        any.put("t", format!("big{i}").as_bytes(), &big(i))
            .await
            .unwrap();
    }
    let mut opts = ListOptions {
        prefix: b"big".to_vec(),
        values: true,
        ..Default::default()
    };
    let mut sizes = Vec::new();
    loop {
        let page = any.list("t", &opts).await.unwrap();
        sizes.push(page.keys.len());
        for (k, v) in page.keys.iter().zip(&page.values) {
            assert_eq!(*v, big(k[3] - b'0'), "{}", String::from_utf8_lossy(k));
        }
        match page.cursor {
            Some(cur) => opts.cursor = cur,
            None => break,
        }
    }
    assert_eq!(sizes, [4, 2]);
    opts = ListOptions {
        prefix: b"big".to_vec(),
        ..Default::default()
    };
    let keys_only = any.list("t", &opts).await.unwrap();
    assert_eq!((keys_only.keys.len(), keys_only.cursor), (6, None));

    // DeleteTable: unknown at once, and its data leaves every engine.
    any.drop_table("t").await.unwrap();
    for cl in &clients {
        let e = cl.get("t", &key(1)).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::TableNotFound, "{e}");
    }
    assert_eq!(
        any.drop_table("t").await.unwrap_err().code,
        ErrorCode::TableNotFound
    );
    for (i, cl) in clients.iter().enumerate() {
        wait_for(
            Duration::from_secs(30),
            "the dropped table's keys to leave the engine",
            || async {
                let s = cl.engine_stats(t.id, &partition_ids).await.ok()?;
                (s == Default::default()).then_some(())
            },
        )
        .await;
        let s = cl.engine_stats(t.id, &partition_ids).await.unwrap();
        assert_eq!(
            s.data_keys + s.raft_keys + s.replica_keys,
            0,
            "node {}",
            i + 1
        );
    }
    // The name is free again.
    any.create_table("t", 3, vec![]).await.unwrap();
    assert_eq!(any.get("t", &key(1)).await.unwrap(), None);
}

/// Creating an existing table is refused, and so is a replication the cluster cannot hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t11_create_table_refusals() {
    let c = Cluster::start(3).await;
    let cl = c.client();
    cl.create_table("a", 1, vec![]).await.unwrap();
    assert_eq!(
        cl.create_table("a", 3, vec![]).await.unwrap_err().code,
        ErrorCode::AlreadyExists
    );
    assert_eq!(
        cl.create_table("five", 5, vec![]).await.unwrap_err().code,
        ErrorCode::NotEnoughNodes
    );
    assert_eq!(
        cl.create_table("two", 2, vec![]).await.unwrap_err().code,
        ErrorCode::InvalidArgument
    );
    let names: Vec<String> = cl
        .list_tables()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, vec!["a".to_string()]);
    cl.put("a", b"x", b"1").await.unwrap();
    assert_eq!(cl.get("a", b"x").await.unwrap(), Some(b"1".to_vec()));
}
