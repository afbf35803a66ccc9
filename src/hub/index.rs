//! The subscription index: which subscribers' filters match a topic.
//!
//! A trie on topic levels, with a `+` branch and a `#` set at every node, so a publish
//! costs one walk down the topic's levels (plus the wildcard branches that exist), not a
//! scan of every subscription. Subscribers are kept per node in a map keyed by a small
//! id, so removing one of 100k subscriptions is O(levels), not O(subscriptions).

use std::collections::HashMap;

/// A subscriber key, unique per connection for the life of the process.
pub type Key = u64;

struct Node<T> {
    children: HashMap<Box<str>, Node<T>>,
    plus: Option<Box<Node<T>>>,
    /// Subscribers whose filter ends here.
    exact: HashMap<Key, T>,
    /// Subscribers whose filter ends here with `/#`: they match this level and below.
    hash: HashMap<Key, T>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Self {
            children: HashMap::new(),
            plus: None,
            exact: HashMap::new(),
            hash: HashMap::new(),
        }
    }
}

impl<T> Node<T> {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.exact.is_empty()
            && self.hash.is_empty()
    }
}

pub struct SubscriptionIndex<T> {
    root: Node<T>,
    len: usize,
}

impl<T> Default for SubscriptionIndex<T> {
    fn default() -> Self {
        Self {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<T: Clone> SubscriptionIndex<T> {
    /// Number of (subscriber, filter) pairs.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds a subscription to a valid filter. Returns false if it was already there.
    pub fn insert(&mut self, filter: &str, key: Key, value: T) -> bool {
        let mut node = &mut self.root;
        let mut levels = filter.split('/').peekable();
        while let Some(level) = levels.next() {
            if level == "#" && levels.peek().is_none() {
                let added = node.hash.insert(key, value).is_none();
                self.len += usize::from(added);
                return added;
            }
            node = if level == "+" {
                node.plus.get_or_insert_with(Default::default)
            } else {
                node.children.entry(level.into()).or_default()
            };
        }
        let added = node.exact.insert(key, value).is_none();
        self.len += usize::from(added);
        added
    }

    /// Removes a subscription; prunes nodes left empty. Returns false if it was absent.
    pub fn remove(&mut self, filter: &str, key: Key) -> bool {
        let levels: Vec<&str> = filter.split('/').collect();
        let removed = remove_in(&mut self.root, &levels, key);
        self.len -= usize::from(removed);
        removed
    }

    /// Calls `f` once per subscriber whose filter matches `topic`. A subscriber that
    /// holds several matching filters is visited once.
    pub fn for_each_match(&self, topic: &str, mut f: impl FnMut(&T)) {
        let levels: Vec<&str> = topic.split('/').collect();
        let mut sets: Vec<&HashMap<Key, T>> = Vec::new();
        // MQTT §4.7.2: wildcards at the first level do not match `$` topics.
        let system = topic.starts_with('$');
        collect(&self.root, &levels, !system, &mut sets);
        match sets.as_slice() {
            [] => {}
            // The common case: one filter set matched, no duplicates possible.
            [only] => only.values().for_each(&mut f),
            many => {
                let mut seen: Vec<(Key, &T)> = many
                    .iter()
                    .flat_map(|s| s.iter().map(|(k, v)| (*k, v)))
                    .collect();
                seen.sort_unstable_by_key(|(k, _)| *k);
                seen.dedup_by_key(|(k, _)| *k);
                seen.into_iter().for_each(|(_, v)| f(v));
            }
        }
    }

    /// Every filter with at least one subscriber, with how many hold it, in no
    /// particular order. Walks the whole trie: for the API, not the data path.
    pub fn filters(&self) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        let mut path = Vec::new();
        walk(&self.root, &mut path, &mut out);
        out
    }

    /// Number of distinct subscribers matching `topic`.
    pub fn count_matches(&self, topic: &str) -> usize {
        let mut n = 0;
        self.for_each_match(topic, |_| n += 1);
        n
    }
}

fn walk<'a, T>(node: &'a Node<T>, path: &mut Vec<&'a str>, out: &mut Vec<(String, usize)>) {
    if !node.exact.is_empty() {
        out.push((path.join("/"), node.exact.len()));
    }
    if !node.hash.is_empty() {
        let mut filter = path.clone();
        filter.push("#");
        out.push((filter.join("/"), node.hash.len()));
    }
    if let Some(plus) = &node.plus {
        path.push("+");
        walk(plus, path, out);
        path.pop();
    }
    for (level, child) in &node.children {
        path.push(level);
        walk(child, path, out);
        path.pop();
    }
}

fn collect<'a, T>(
    node: &'a Node<T>,
    levels: &[&str],
    wildcards: bool,
    out: &mut Vec<&'a HashMap<Key, T>>,
) {
    if wildcards && !node.hash.is_empty() {
        out.push(&node.hash);
    }
    let Some((first, rest)) = levels.split_first() else {
        if !node.exact.is_empty() {
            out.push(&node.exact);
        }
        return;
    };
    if let Some(child) = node.children.get(*first) {
        collect(child, rest, true, out);
    }
    if wildcards {
        if let Some(plus) = &node.plus {
            collect(plus, rest, true, out);
        }
    }
}

fn remove_in<T>(node: &mut Node<T>, levels: &[&str], key: Key) -> bool {
    match levels {
        [] => node.exact.remove(&key).is_some(),
        ["#"] => node.hash.remove(&key).is_some(),
        [first, rest @ ..] => {
            if *first == "+" {
                let Some(plus) = node.plus.as_deref_mut() else {
                    return false;
                };
                let removed = remove_in(plus, rest, key);
                if plus.is_empty() {
                    node.plus = None;
                }
                removed
            } else {
                let Some(child) = node.children.get_mut(*first) else {
                    return false;
                };
                let removed = remove_in(child, rest, key);
                if child.is_empty() {
                    node.children.remove(*first);
                }
                removed
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_core::topic;

    fn matched(index: &SubscriptionIndex<u64>, topic: &str) -> Vec<u64> {
        let mut v = Vec::new();
        index.for_each_match(topic, |k| v.push(*k));
        v.sort_unstable();
        v
    }

    #[test]
    fn agrees_with_the_reference_matcher() {
        let filters = [
            "a/b/c", "a/+/c", "a/#", "#", "+/+", "+", "a/b", "$SYS/#", "+/b/#", "/+", "a//c",
            "a/+/+/d",
        ];
        let topics = [
            "a/b/c",
            "a/x/c",
            "a",
            "a/b",
            "x/y",
            "x",
            "$SYS/load",
            "/x",
            "a//c",
            "a/b/c/d",
            "z/b",
        ];
        let mut index = SubscriptionIndex::default();
        for (k, f) in filters.iter().enumerate() {
            assert!(index.insert(f, k as u64, k as u64));
        }
        for t in topics {
            let want: Vec<u64> = filters
                .iter()
                .enumerate()
                .filter(|(_, f)| topic::matches(f, t))
                .map(|(k, _)| k as u64)
                .collect();
            assert_eq!(matched(&index, t), want, "topic {t}");
        }
    }

    #[test]
    fn one_delivery_per_subscriber_and_clean_removal() {
        let mut index = SubscriptionIndex::default();
        index.insert("a/#", 1, 1);
        index.insert("a/+", 1, 1);
        index.insert("a/b", 1, 1);
        index.insert("a/b", 2, 2);
        assert_eq!(matched(&index, "a/b"), [1, 2]);
        assert_eq!(index.len(), 4);
        assert!(index.remove("a/#", 1));
        assert!(!index.remove("a/#", 1));
        assert!(index.remove("a/+", 1));
        assert!(index.remove("a/b", 1));
        assert!(index.remove("a/b", 2));
        assert!(index.is_empty());
        assert!(index.root.is_empty(), "empty nodes are pruned");
    }

    #[test]
    fn filters_lists_every_subscribed_filter_with_counts() {
        let mut index = SubscriptionIndex::default();
        for (filter, key) in [
            ("#", 1),
            ("a/+/c", 1),
            ("a/+/c", 2),
            ("a/b", 3),
            ("a/#", 4),
            ("$x/y", 5),
        ] {
            index.insert(filter, key, key);
        }
        index.remove("a/b", 3);
        let mut got = index.filters();
        got.sort();
        let want: Vec<(String, usize)> = [("#", 1), ("$x/y", 1), ("a/#", 1), ("a/+/c", 2)]
            .iter()
            .map(|(f, n)| (f.to_string(), *n))
            .collect();
        assert_eq!(got, want);
    }
}
