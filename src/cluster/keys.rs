//! Where a topic lives in Redis: its partition, that partition's Redis, and the keys.
//!
//! A topic's partition is a jump consistent hash of its FNV-1a 64 hash, so every box
//! agrees without talking; a partition's Redis (with several URLs) is the same hash of
//! the partition's name. Every key of a partition carries the hash tag `{pN}`, so one
//! publish touches one Redis Cluster slot too.

/// FNV-1a, 64 bits: stable across builds and platforms (std's hasher is neither).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Lamping and Veach's jump consistent hash: a bucket in `0..buckets`.
pub fn jump(mut key: u64, buckets: u32) -> u32 {
    let (mut b, mut j): (i64, i64) = (-1, 0);
    while j < i64::from(buckets) {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as u32
}

pub fn partition(topic: &str, partitions: u32) -> u32 {
    jump(fnv1a64(topic.as_bytes()), partitions)
}

/// Which of `shards` Redis servers holds a partition.
pub fn shard(partition: u32, shards: usize) -> usize {
    let name = format!("p{partition}");
    jump(fnv1a64(name.as_bytes()), shards as u32) as usize
}

/// The partition's bus stream: every message of its topics, in one order.
pub fn bus(partition: u32) -> String {
    format!("sb:{{p{partition}}}:bus")
}

/// The bus stream's meta hash: `e` its epoch, `s` its last position.
pub fn bus_meta(partition: u32) -> String {
    format!("sb:{{p{partition}}}:bus:meta")
}

/// A topic's meta hash: `e` its epoch, `s` its last number.
pub fn topic_meta(partition: u32, topic: &str) -> String {
    format!("sb:{{p{partition}}}:t:{topic}:meta")
}

/// A topic's history stream, entry ids `<seq>-0`.
pub fn topic_history(partition: u32, topic: &str) -> String {
    format!("sb:{{p{partition}}}:t:{topic}:hist")
}

/// The answer the publish script gave a message it may be sent again (`publish.rs`).
pub fn result(partition: u32, id: &str) -> String {
    format!("sb:{{p{partition}}}:res:{id}")
}

/// The partition's retained values: topic → its latest retained message (`retained.rs`).
pub fn retained(partition: u32) -> String {
    format!("sb:{{p{partition}}}:retained")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_stable_and_spread() {
        // Fixed values: every box, every build and every version must agree.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(jump(0, 1), 0);
        let mut seen = [0u32; 16];
        for i in 0..1600 {
            seen[partition(&format!("sensors/{i}/t"), 16) as usize] += 1;
        }
        assert!(seen.iter().all(|n| *n > 50), "{seen:?}");
        assert_eq!(partition("a/b", 16), partition("a/b", 16));
        assert!(shard(3, 2) < 2);
    }
}
