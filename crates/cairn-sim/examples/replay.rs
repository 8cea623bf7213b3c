//! Replays one seed and tells what happened: `cargo run -p cairn-sim --example replay -- 42`
//! (`STALE=1` sends reads as stale reads). The history goes to `target/sim/seed-N.jsonl`.
#![allow(clippy::unwrap_used, missing_docs)]

fn main() {
    let seed = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let mut cfg = cairn_sim::SimConfig::new(seed);
    cfg.stale_reads = std::env::var("STALE").is_ok();
    let t = std::time::Instant::now();
    let out = match cairn_sim::run(&cfg) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("seed {seed}: {e:#}");
            std::process::exit(1);
        }
    };
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/sim");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("seed-{seed}.jsonl"));
    std::fs::write(&path, &out.history).unwrap();
    println!(
        "seed {seed}: {} ok operations, {} violation(s), {:.2} s; history in {}",
        out.ok_ops,
        out.violations.len(),
        t.elapsed().as_secs_f64(),
        path.display()
    );
    for f in &out.faults {
        println!("  {f}");
    }
    for v in out.violations.iter().take(10) {
        println!("VIOLATION {v}");
    }
    if !out.violations.is_empty() {
        std::process::exit(1);
    }
}
