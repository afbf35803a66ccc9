//! The subscription index at scale: 100,000 subscriptions over thousands of topics.
//!
//! Reports the cost of one publish's match against the index, and the same match done
//! the naive way (every filter tested against the topic) in the same run, so the figure
//! is a ratio rather than a wall-clock promise. Also times subscribe and unsubscribe.
//!
//! Run: `cargo bench --bench index`

use std::hint::black_box;
use std::time::{Duration, Instant};

use switchboard::hub::index::SubscriptionIndex;
use switchboard_core::topic;

const SUBSCRIPTIONS: u64 = 100_000;
const SITES: u64 = 50;
const ROOMS: u64 = 20;
const SENSORS: [&str; 5] = ["temperature", "humidity", "co2", "motion", "power"];

/// A realistic mix: most clients watch one sensor, some a room (`+`), a few a whole
/// site (`#`), a handful everything of one kind across sites.
fn filter_for(i: u64) -> String {
    let site = i % SITES;
    let room = (i / SITES) % ROOMS;
    let sensor = SENSORS[(i % SENSORS.len() as u64) as usize];
    match i % 100 {
        0..=79 => format!("site{site}/room{room}/{sensor}"),
        80..=94 => format!("site{site}/room{room}/+"),
        95..=98 => format!("site{site}/#"),
        _ => format!("+/+/{sensor}"),
    }
}

fn topics() -> Vec<String> {
    let mut t = Vec::new();
    for site in 0..SITES {
        for room in 0..ROOMS {
            for sensor in SENSORS {
                t.push(format!("site{site}/room{room}/{sensor}"));
            }
        }
    }
    t
}

/// Runs `f` over the topics until `budget` has passed; returns ns per call and a
/// checksum of delivered subscribers (so the work cannot be optimised away).
fn time_per_match(
    topics: &[String],
    budget: Duration,
    mut f: impl FnMut(&str) -> usize,
) -> (f64, usize) {
    let start = Instant::now();
    let mut calls = 0u64;
    let mut delivered = 0usize;
    while start.elapsed() < budget {
        for t in topics.iter().step_by(7) {
            delivered += f(t);
            calls += 1;
        }
    }
    (
        start.elapsed().as_nanos() as f64 / calls as f64,
        delivered / calls.max(1) as usize,
    )
}

fn main() {
    let filters: Vec<String> = (0..SUBSCRIPTIONS).map(filter_for).collect();
    let topics = topics();

    let start = Instant::now();
    let mut index = SubscriptionIndex::default();
    for (k, f) in filters.iter().enumerate() {
        index.insert(f, k as u64, k as u64);
    }
    let insert_ns = start.elapsed().as_nanos() as f64 / SUBSCRIPTIONS as f64;

    let budget = Duration::from_secs(2);
    let (indexed_ns, avg_fanout) = time_per_match(&topics, budget, |t| {
        let mut n = 0;
        index.for_each_match(t, |k| {
            black_box(k);
            n += 1;
        });
        n
    });
    let (naive_ns, naive_fanout) = time_per_match(&topics, budget, |t| {
        filters
            .iter()
            .filter(|f| topic::matches(black_box(f), t))
            .count()
    });
    assert_eq!(avg_fanout, naive_fanout, "index and naive scan disagree");

    let start = Instant::now();
    for (k, f) in filters.iter().enumerate() {
        index.remove(f, k as u64);
    }
    let remove_ns = start.elapsed().as_nanos() as f64 / SUBSCRIPTIONS as f64;
    assert!(index.is_empty());

    println!(
        "subscription index: {SUBSCRIPTIONS} subscriptions, {} topics",
        topics.len()
    );
    println!("  subscribers per publish (mean)   {avg_fanout}");
    println!("  match, index                     {indexed_ns:>10.0} ns/publish");
    println!("  match, naive scan (baseline)     {naive_ns:>10.0} ns/publish");
    println!(
        "  speed-up over the naive scan     {:>10.0}x",
        naive_ns / indexed_ns
    );
    println!("  subscribe                        {insert_ns:>10.0} ns");
    println!("  unsubscribe                      {remove_ns:>10.0} ns");
}
