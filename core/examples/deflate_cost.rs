//! CPU of permessage-deflate per message, for docs/benchmarks.md: what compressing a
//! frame (once per publish in the daemon) and inflating one (per compressed message a
//! client sends) cost, at each level, for a small reading and a 20-sensor batch.
//!
//! Run: `cargo run --release -p switchboard-core --example deflate_cost`

use std::time::Instant;

use switchboard_core::deflate::compress;

fn main() {
    let reading = br#"{"op":"msg","topic":"sensors/node-3/env","data":{"n":17,"t":21.37,"up":145000,"src":"chip"},"ts":1765000000123,"seq":17,"from":"c42"}"#.to_vec();
    let rows: Vec<String> = (0..20)
        .map(|k| {
            format!(
                r#"{{"node":"node-{k}","t":{}.{},"h":{},"bat":3.71}}"#,
                20 + k % 5,
                k % 10,
                40 + k
            )
        })
        .collect();
    let batch = format!(
        r#"{{"op":"msg","topic":"sensors/gw/env","data":{{"readings":[{}],"ts":1765000000000}},"ts":1765000000123,"seq":17,"from":"c42"}}"#,
        rows.join(",")
    )
    .into_bytes();
    let rounds = 20_000;
    println!("| frame | level | bytes | compress, µs | copy, µs |");
    for (name, frame) in [("reading", &reading), ("20-sensor batch", &batch)] {
        for level in [1, 6, 9] {
            let started = Instant::now();
            let mut size = 0;
            for _ in 0..rounds {
                size =
                    compress(std::hint::black_box(frame), level).map_or(frame.len(), |c| c.len());
            }
            let per = started.elapsed().as_secs_f64() / rounds as f64 * 1e6;
            // What an uncompressed frame costs to copy into a socket buffer, for scale.
            let started = Instant::now();
            for _ in 0..rounds {
                std::hint::black_box(std::hint::black_box(frame).clone());
            }
            let copy = started.elapsed().as_secs_f64() / rounds as f64 * 1e6;
            println!(
                "| {name} ({} B) | {level} | {size} | {per:.1} | {copy:.2} |",
                frame.len()
            );
        }
    }
}
