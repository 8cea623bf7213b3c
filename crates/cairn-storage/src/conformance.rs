//! A conformance suite every [`Engine`] implementation must pass. Engines call
//! [`run_all`] from their own tests with a factory that makes a fresh, empty engine.
#![allow(clippy::unwrap_used)]

use crate::{Engine, MAX_ENGINE_KEY, PageLimit, Space, WriteBatch, count_range, delete_range};

/// Makes a fresh, empty engine for one check.
pub type Factory<'a> = &'a dyn Fn() -> Box<dyn Engine>;

/// Runs every check; panics with the name of the first that fails.
pub fn run_all(make: Factory<'_>) {
    get_put_delete(&*make());
    spaces_are_separate(&*make());
    scan_bounds_and_order(&*make());
    batch_is_atomic_and_ordered(&*make());
    ranges_delete_and_count(&*make());
    read_view_is_a_point_in_time(&*make());
    oversized_keys_are_refused(&*make());
    pages_end_at_rows_or_bytes(&*make());
}

/// A page ends at its row limit or after the pair that reaches its byte limit, says which,
/// and leaves values out when asked to.
fn pages_end_at_rows_or_bytes(e: &dyn Engine) {
    for k in [b"a", b"b", b"c", b"d"] {
        put(e, Space::Data, k, &[b'v'; 99]);
    }
    let page = |rows, bytes, values| {
        let limit = PageLimit {
            rows,
            bytes,
            values,
        };
        e.scan_page(Space::Data, b"b", None, limit).unwrap()
    };
    let keys = |p: &crate::Page| p.rows.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
    // 100 bytes a pair: the second pair reaches 150.
    let p = page(10, 150, true);
    assert_eq!(
        keys(&p),
        [b"b".to_vec(), b"c".to_vec()],
        "pages: byte limit"
    );
    assert!(p.cut, "pages: cut by bytes");
    assert_eq!(p.rows[1].1, vec![b'v'; 99], "pages: values");
    let p = page(2, 1 << 20, true);
    assert_eq!(keys(&p), [b"b".to_vec(), b"c".to_vec()], "pages: row limit");
    assert!(!p.cut, "pages: the row limit is not a cut");
    let p = page(10, 150, false);
    assert_eq!(p.rows.len(), 3, "pages: keys only count only keys");
    assert!(p.rows.iter().all(|(_, v)| v.is_empty()), "pages: no values");
    assert!(!p.cut, "pages: keys only, the end of the space");
    let p = page(10, 0, true);
    assert_eq!(p.rows.len(), 1, "pages: at least one pair");
}

/// A key past the engine's limit is an error, never a panic, and a batch holding one
/// writes nothing.
fn oversized_keys_are_refused(e: &dyn Engine) {
    let longest = vec![b'k'; MAX_ENGINE_KEY];
    let over = vec![b'k'; MAX_ENGINE_KEY + 1];
    put(e, Space::Data, &longest, b"v");
    assert_eq!(
        e.get(Space::Data, &longest).unwrap(),
        Some(b"v".to_vec()),
        "oversized_keys: the longest key is stored"
    );
    let mut b = WriteBatch::new();
    b.put(Space::Data, b"a".to_vec(), b"1".to_vec());
    b.put(Space::Data, over.clone(), b"2".to_vec());
    assert!(
        e.write(b).is_err(),
        "oversized_keys: a batch with a long key"
    );
    let mut b = WriteBatch::new();
    b.put(Space::Data, Vec::new(), b"3".to_vec());
    assert!(
        e.write(b).is_err(),
        "oversized_keys: a batch with an empty key"
    );
    assert_eq!(
        e.get(Space::Data, b"a").unwrap(),
        None,
        "oversized_keys: a refused batch writes nothing"
    );
    assert!(e.get(Space::Data, &over).is_err(), "oversized_keys: get");
    assert!(
        e.scan(Space::Data, &over, None, 10).is_err(),
        "oversized_keys: scan start"
    );
    assert!(
        e.scan_rev(Space::Data, b"", Some(&over), 10).is_err(),
        "oversized_keys: scan_rev end"
    );
    let view = e.read_view().unwrap();
    assert!(
        view.scan(Space::Data, &over, None, 10).is_err(),
        "oversized_keys: view"
    );
    assert_eq!(
        e.scan(Space::Data, b"", None, 10).unwrap().len(),
        1,
        "oversized_keys: only the longest key was written"
    );
}

fn read_view_is_a_point_in_time(e: &dyn Engine) {
    put(e, Space::Data, b"a", b"1");
    put(e, Space::Data, b"b", b"1");
    let view = e.read_view().unwrap();
    put(e, Space::Data, b"a", b"2");
    put(e, Space::Data, b"c", b"2");
    let mut b = WriteBatch::new();
    b.delete(Space::Data, b"b".to_vec());
    e.write(b).unwrap();
    let seen = view.scan(Space::Data, b"", None, 10).unwrap();
    assert_eq!(
        seen,
        vec![
            (b"a".to_vec(), b"1".to_vec()),
            (b"b".to_vec(), b"1".to_vec())
        ],
        "read_view: sees the engine as it was"
    );
    assert_eq!(e.scan(Space::Data, b"", None, 10).unwrap().len(), 2);
}

fn put(e: &dyn Engine, s: Space, k: &[u8], v: &[u8]) {
    let mut b = WriteBatch::new();
    b.put(s, k.to_vec(), v.to_vec());
    e.write(b).unwrap();
}

fn get_put_delete(e: &dyn Engine) {
    assert_eq!(
        e.get(Space::Data, b"k").unwrap(),
        None,
        "get_put_delete: fresh engine"
    );
    put(e, Space::Data, b"k", b"v1");
    put(e, Space::Data, b"k", b"v2");
    assert_eq!(
        e.get(Space::Data, b"k").unwrap(),
        Some(b"v2".to_vec()),
        "get_put_delete: overwrite"
    );
    let mut b = WriteBatch::new();
    b.delete(Space::Data, b"k".to_vec());
    e.write(b).unwrap();
    assert_eq!(
        e.get(Space::Data, b"k").unwrap(),
        None,
        "get_put_delete: deleted"
    );
    e.sync().unwrap();
}

fn spaces_are_separate(e: &dyn Engine) {
    put(e, Space::Raft, b"k", b"raft");
    put(e, Space::Data, b"k", b"data");
    assert_eq!(
        e.get(Space::Raft, b"k").unwrap(),
        Some(b"raft".to_vec()),
        "spaces_are_separate"
    );
    assert_eq!(
        e.get(Space::Local, b"k").unwrap(),
        None,
        "spaces_are_separate: local"
    );
    assert_eq!(
        e.scan(Space::Data, b"", None, 10).unwrap().len(),
        1,
        "spaces_are_separate: scan"
    );
}

fn scan_bounds_and_order(e: &dyn Engine) {
    for k in [&b"b"[..], b"a", b"c\xff", b"c", b"d"] {
        put(e, Space::Data, k, k);
    }
    let keys = |v: Vec<(Vec<u8>, Vec<u8>)>| v.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
    assert_eq!(
        keys(e.scan(Space::Data, b"b", Some(b"d"), 100).unwrap()),
        vec![b"b".to_vec(), b"c".to_vec(), b"c\xff".to_vec()],
        "scan: half-open, ascending"
    );
    assert_eq!(
        keys(e.scan(Space::Data, b"", None, 2).unwrap()),
        vec![b"a".to_vec(), b"b".to_vec()],
        "scan: limit"
    );
    assert_eq!(
        keys(e.scan_rev(Space::Data, b"a", Some(b"c\xff"), 2).unwrap()),
        vec![b"c".to_vec(), b"b".to_vec()],
        "scan_rev: descending, end excluded"
    );
    assert!(
        e.scan(Space::Data, b"d", Some(b"a"), 10)
            .unwrap()
            .is_empty(),
        "scan: empty range"
    );
}

fn batch_is_atomic_and_ordered(e: &dyn Engine) {
    let mut b = WriteBatch::new();
    b.put(Space::Data, b"x".to_vec(), b"1".to_vec());
    b.put(Space::Raft, b"y".to_vec(), b"2".to_vec());
    b.delete(Space::Data, b"x".to_vec());
    b.put(Space::Data, b"z".to_vec(), b"3".to_vec());
    e.write(b).unwrap();
    e.sync().unwrap();
    assert_eq!(
        e.get(Space::Data, b"x").unwrap(),
        None,
        "batch: later delete wins"
    );
    assert_eq!(
        e.get(Space::Raft, b"y").unwrap(),
        Some(b"2".to_vec()),
        "batch: other space"
    );
    assert_eq!(
        e.get(Space::Data, b"z").unwrap(),
        Some(b"3".to_vec()),
        "batch: last put"
    );
}

fn ranges_delete_and_count(e: &dyn Engine) {
    for i in 0u32..2500 {
        put(e, Space::Data, format!("r{i:05}").as_bytes(), b"v");
    }
    put(e, Space::Data, b"s", b"outside");
    assert_eq!(
        count_range(e, Space::Data, b"r", Some(b"s")).unwrap(),
        2500,
        "count_range"
    );
    assert_eq!(
        delete_range(e, Space::Data, b"r", Some(b"s"), 1000).unwrap(),
        2500,
        "delete_range"
    );
    assert_eq!(
        count_range(e, Space::Data, b"r", Some(b"s")).unwrap(),
        0,
        "delete_range: gone"
    );
    assert_eq!(
        e.get(Space::Data, b"s").unwrap(),
        Some(b"outside".to_vec()),
        "delete_range: bounds"
    );
}
