use crate::cluster::Cluster;
use cairn_client::ListOptions;
use cairn_types::ErrorCode;

async fn expect_error(resp: reqwest::Response, status: u16, code: &str) {
    let got = resp.status().as_u16();
    let body = resp.text().await.unwrap();
    assert_eq!(got, status, "body: {body}");
    let v: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    assert_eq!(v["error"]["code"], code, "body: {body}");
    assert!(
        !v["error"]["message"].as_str().unwrap_or("").is_empty(),
        "body: {body}"
    );
}

/// Bad input over HTTP gets the documented status and JSON error, writes nothing, and the
/// node keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t40_http_bad_input() {
    let c = Cluster::start(3).await;
    let base = c.http(1);
    let h = reqwest::Client::new();
    let r = h
        .post(format!("{base}/v1/tables"))
        .body(r#"{"name":"t","split_keys":["m"]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap());

    // More partitions than one CreateTable may make: refused, and no table is made.
    let splits: Vec<String> = (0..4096).map(|i| format!("k{i:05}")).collect();
    let r = h
        .post(format!("{base}/v1/tables"))
        .body(serde_json::json!({"name": "huge", "split_keys": splits}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let body = r.text().await.unwrap();
    assert!(
        body.contains("at most 4096") && body.contains("INVALID_ARGUMENT"),
        "{body}"
    );
    expect_error(
        h.get(format!("{base}/v1/tables/huge"))
            .send()
            .await
            .unwrap(),
        404,
        "TABLE_NOT_FOUND",
    )
    .await;

    let keys = format!("{base}/v1/tables/t/keys");
    expect_error(
        h.put(format!("{keys}/")).body("v").send().await.unwrap(),
        400,
        "INVALID_ARGUMENT",
    )
    .await;
    let long_key = "k".repeat(4097);
    expect_error(
        h.put(format!("{keys}/{long_key}"))
            .body("v")
            .send()
            .await
            .unwrap(),
        413,
        "TOO_LARGE",
    )
    .await;
    // A List bound longer than any key: refused, not scanned.
    expect_error(
        h.get(format!("{keys}?start={}", "k".repeat(5000)))
            .send()
            .await
            .unwrap(),
        400,
        "INVALID_ARGUMENT",
    )
    .await;
    // A value past the limit, and a body past what any request may carry (twice the value
    // limit and 1 MiB, refused before it is read): both TOO_LARGE, in JSON.
    for len in [(1 << 20) + 1, (3 << 20) + 1] {
        expect_error(
            h.put(format!("{keys}/big"))
                .body(vec![b'x'; len])
                .send()
                .await
                .unwrap(),
            413,
            "TOO_LARGE",
        )
        .await;
    }
    // A method a path does not take: 405 with the methods it does take, in JSON.
    let r = h.patch(format!("{keys}/k")).body("v").send().await.unwrap();
    let allow = r
        .headers()
        .get("allow")
        .map(|v| v.to_str().unwrap_or("").to_string());
    assert!(
        allow.as_deref().is_some_and(|a| a.contains("PUT")),
        "Allow: {allow:?}"
    );
    expect_error(r, 405, "INVALID_ARGUMENT").await;
    expect_error(
        h.put(format!("{keys}/bad%zz"))
            .body("v")
            .send()
            .await
            .unwrap(),
        400,
        "INVALID_ARGUMENT",
    )
    .await;
    expect_error(
        h.get(format!("{keys}/cut%4")).send().await.unwrap(),
        400,
        "INVALID_ARGUMENT",
    )
    .await;
    expect_error(
        h.put(format!("{base}/v1/tables/no%20such/keys/k"))
            .body("v")
            .send()
            .await
            .unwrap(),
        400,
        "INVALID_ARGUMENT",
    )
    .await;
    expect_error(
        h.put(format!("{base}/v1/tables/missing/keys/k"))
            .body("v")
            .send()
            .await
            .unwrap(),
        404,
        "TABLE_NOT_FOUND",
    )
    .await;
    expect_error(
        h.get(format!("{base}/v1/tables/missing"))
            .send()
            .await
            .unwrap(),
        404,
        "TABLE_NOT_FOUND",
    )
    .await;
    expect_error(
        h.delete(format!("{base}/v1/tables/missing"))
            .send()
            .await
            .unwrap(),
        404,
        "TABLE_NOT_FOUND",
    )
    .await;
    expect_error(
        h.post(format!("{base}/v1/tables"))
            .body("{not json")
            .send()
            .await
            .unwrap(),
        400,
        "INVALID_ARGUMENT",
    )
    .await;
    expect_error(
        h.post(format!("{base}/v1/tables"))
            .body(r#"{"name":"bad name"}"#)
            .send()
            .await
            .unwrap(),
        400,
        "INVALID_ARGUMENT",
    )
    .await;
    expect_error(
        h.post(format!("{base}/v1/tables"))
            .body(r#"{"name":"t"}"#)
            .send()
            .await
            .unwrap(),
        409,
        "ALREADY_EXISTS",
    )
    .await;
    expect_error(
        h.post(format!("{base}/v1/tables"))
            .body(r#"{"name":"f","replication":5}"#)
            .send()
            .await
            .unwrap(),
        503,
        "NOT_ENOUGH_NODES",
    )
    .await;
    expect_error(
        h.get(format!("{keys}?limit=20000")).send().await.unwrap(),
        400,
        "INVALID_ARGUMENT",
    )
    .await;
    expect_error(
        h.get(format!("{keys}?cursor=%%%")).send().await.unwrap(),
        400,
        "INVALID_ARGUMENT",
    )
    .await;
    // A misspelt option is refused, as Get refuses it, rather than read as its default
    // (`values=yes` used to return no values).
    for q in ["consistency=bogus", "values=yes", "encoding=hex"] {
        expect_error(
            h.get(format!("{keys}?{q}")).send().await.unwrap(),
            400,
            "INVALID_ARGUMENT",
        )
        .await;
    }

    // Nothing was written, and the node still serves.
    let list: serde_json::Value = h.get(&keys).send().await.unwrap().json_text().await;
    let list2: serde_json::Value = h
        .get(format!("{keys}?start=m"))
        .send()
        .await
        .unwrap()
        .json_text()
        .await;
    assert_eq!(list2["keys"], serde_json::json!([]));
    assert_eq!(list["keys"], serde_json::json!([]));
    assert_eq!(
        h.get(format!("{base}/health"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    let r = h
        .put(format!("{keys}/ok%2Fkey%FF"))
        .body("fine")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let r = h.get(format!("{keys}/ok%2Fkey%FF")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"fine");
    let list: serde_json::Value = h
        .get(format!("{keys}?start=n"))
        .send()
        .await
        .unwrap()
        .json_text()
        .await;
    assert_eq!(list["encoding"], "base64", "{list}");
    assert_eq!(
        h.get(format!("{keys}/absent"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        404
    );
}

trait JsonText {
    async fn json_text(self) -> serde_json::Value;
}

impl JsonText for reqwest::Response {
    async fn json_text(self) -> serde_json::Value {
        let t = self.text().await.unwrap();
        serde_json::from_str(&t).unwrap_or_else(|e| panic!("not JSON ({e}): {t}"))
    }
}

/// Bad input over gRPC gets the documented error code, writes nothing, and the node keeps
/// serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t41_grpc_bad_input() {
    let c = Cluster::start(3).await;
    let cl = c.client();
    cl.create_table("t", 3, vec![]).await.unwrap();
    assert_eq!(
        cl.put("t", b"", b"v").await.unwrap_err().code,
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        cl.put("t", &[b'k'; 4097], b"v").await.unwrap_err().code,
        ErrorCode::TooLarge
    );
    assert_eq!(
        cl.put("t", b"k", &vec![0u8; (1 << 20) + 1])
            .await
            .unwrap_err()
            .code,
        ErrorCode::TooLarge
    );
    assert_eq!(
        cl.get("t", b"").await.unwrap_err().code,
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        cl.put("bad name", b"k", b"v").await.unwrap_err().code,
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        cl.create_table("bad/name", 3, vec![])
            .await
            .unwrap_err()
            .code,
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        cl.create_table("s", 3, vec![b"b".to_vec(), b"a".to_vec()])
            .await
            .unwrap_err()
            .code,
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        cl.get("missing", b"k").await.unwrap_err().code,
        ErrorCode::TableNotFound
    );
    assert_eq!(
        cl.put("missing", b"k", b"v").await.unwrap_err().code,
        ErrorCode::TableNotFound
    );
    let opts = ListOptions {
        limit: 10_001,
        ..Default::default()
    };
    assert_eq!(
        cl.list("t", &opts).await.unwrap_err().code,
        ErrorCode::InvalidArgument
    );
    assert!(
        cl.list("t", &ListOptions::default())
            .await
            .unwrap()
            .keys
            .is_empty()
    );
    // A List bound longer than any key is refused, even one past the storage engine's own
    // key limit (which once took the serving task down), linearizable or stale; one byte
    // past the longest key (a page's cursor can be) is a bound like any other.
    for (start, prefix, stale) in [
        (vec![b'a'; 70_000], vec![], false),
        (vec![], vec![b'a'; 70_000], true),
        (vec![b'a'; 4098], vec![], false),
    ] {
        let opts = ListOptions {
            start,
            prefix,
            stale,
            ..Default::default()
        };
        let err = cl.list("t", &opts).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument, "{err}");
        assert!(err.message.contains("--max-key-bytes"), "{err}");
    }
    let past_the_longest = ListOptions {
        start: vec![b'a'; 4097],
        ..Default::default()
    };
    assert!(
        cl.list("t", &past_the_longest)
            .await
            .unwrap()
            .keys
            .is_empty()
    );
    // A request past what a node reads at all (64 MiB) is refused from its length, before
    // its body is read, and the client says so rather than retrying.
    let err = cl.put("t", b"k", &vec![0u8; 65 << 20]).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::TooLarge, "{err}");
    assert!(err.message.contains("message length too large"), "{err}");
    // A 1 MiB value is fine.
    cl.put("t", b"k", &vec![7u8; 1 << 20]).await.unwrap();
    assert_eq!(
        cl.get("t", b"k").await.unwrap().map(|v| v.len()),
        Some(1 << 20)
    );
}
