use crate::cluster::Cluster;

/// `--log-format json`: every line a node writes is one JSON object with a timestamp, a
/// level and a message, so that a log shipper can take the stream as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t66_json_logs_are_one_object_per_line() {
    let c = Cluster::start_with(1, &["--log-format", "json"]).await;
    c.client().create_table("j", 1, vec![]).await.unwrap();
    c.client().put("j", b"k", b"v").await.unwrap();
    let log = c.log(1);
    let mut lines = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("a log line is not JSON ({e}): {line}"));
        assert!(v["timestamp"].is_string(), "no timestamp: {line}");
        assert!(v["level"].is_string(), "no level: {line}");
        assert!(v["fields"]["message"].is_string(), "no message: {line}");
        lines += 1;
    }
    assert!(lines > 0, "the node logged nothing");
    assert!(log.contains(r#""level":"INFO""#), "{log}");
}
