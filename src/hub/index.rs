//! The subscription index: which subscribers' filters match a topic.
//!
//! A trie on topic levels, with a `+` branch and a `#` set at every node, so a publish
//! costs one walk down the topic's levels (plus the wildcard branches that exist), not a
//! scan of every subscription. Subscribers are kept per node in a map keyed by a small
//! id, so removing one of 100k subscriptions is O(levels), not O(subscriptions).
//!
//! Beside the trie, each filter's number of subscribers is kept in order, so a listing
//! is a page of it (O(log n + page)) rather than a walk of the whole trie under the
//! lock every publish needs: over 100k filters the walk slowed every other client from
//! 1 ms to 0.5–2 s while `GET /api/v1/topics` ran.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;

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
    /// Each subscribed filter with its number of subscribers, in byte order.
    counts: BTreeMap<Box<str>, usize>,
}

impl<T> Default for SubscriptionIndex<T> {
    fn default() -> Self {
        Self {
            root: Node::default(),
            len: 0,
            counts: BTreeMap::new(),
        }
    }
}

/// One page of subscribed filters (see [`SubscriptionIndex::page`]).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FilterPage {
    pub filters: Vec<(String, usize)>,
    /// Where the next page starts (pass as `after`), if more filters may follow.
    pub next: Option<String>,
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
                self.count(filter, added);
                return added;
            }
            node = if level == "+" {
                node.plus.get_or_insert_with(Default::default)
            } else {
                node.children.entry(level.into()).or_default()
            };
        }
        let added = node.exact.insert(key, value).is_none();
        self.count(filter, added);
        added
    }

    /// Counts a subscription to `filter` added.
    fn count(&mut self, filter: &str, added: bool) {
        if !added {
            return;
        }
        self.len += 1;
        match self.counts.get_mut(filter) {
            Some(n) => *n += 1,
            None => {
                self.counts.insert(filter.into(), 1);
            }
        }
    }

    /// Removes a subscription; prunes nodes left empty. Returns false if it was absent.
    pub fn remove(&mut self, filter: &str, key: Key) -> bool {
        let levels: Vec<&str> = filter.split('/').collect();
        let removed = remove_in(&mut self.root, &levels, key);
        if removed {
            self.len -= 1;
            if let Some(n) = self.counts.get_mut(filter) {
                *n -= 1;
                if *n == 0 {
                    self.counts.remove(filter);
                }
            }
        }
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

    /// Up to `limit` subscribed filters, with how many hold each, in byte order: those
    /// after `after` that start with `prefix` and that `visible` lets through. Looks at
    /// no more than `scan` filters, so a caller who may see few of them still gets a
    /// page for bounded work (possibly a short one, with `next` set).
    pub fn page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        scan: usize,
        visible: impl Fn(&str) -> bool,
    ) -> FilterPage {
        let start = match after {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix),
        };
        let mut page = FilterPage::default();
        let mut last: Option<&str> = None;
        let filters = self.counts.range::<str, _>((start, Bound::Unbounded));
        for (looked, (filter, n)) in filters.enumerate() {
            if !filter.starts_with(prefix) {
                break;
            }
            if page.filters.len() == limit || looked == scan {
                page.next = last.map(str::to_owned);
                break;
            }
            last = Some(filter);
            if visible(filter) {
                page.filters.push((filter.to_string(), *n));
            }
        }
        page
    }

    /// Whether someone subscribes to exactly `topic` (a filter without wildcards).
    pub fn has_exact(&self, topic: &str) -> bool {
        let mut node = &self.root;
        for level in topic.split('/') {
            match node.children.get(level) {
                Some(child) => node = child,
                None => return false,
            }
        }
        !node.exact.is_empty()
    }

    /// Number of distinct subscribers matching `topic`.
    pub fn count_matches(&self, topic: &str) -> usize {
        let mut n = 0;
        self.for_each_match(topic, |_| n += 1);
        n
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
        let all = |_: &str| true;
        let got = index.page("", None, 10, 100, all);
        let want: Vec<(String, usize)> = [("#", 1), ("$x/y", 1), ("a/#", 1), ("a/+/c", 2)]
            .iter()
            .map(|(f, n)| (f.to_string(), *n))
            .collect();
        assert_eq!(
            got,
            FilterPage {
                filters: want,
                next: None
            }
        );
        let first = index.page("", None, 2, 100, all);
        assert_eq!(first.next.as_deref(), Some("$x/y"));
        let second = index.page("", first.next.as_deref(), 2, 100, all);
        assert_eq!(second.filters.len(), 2);
        assert_eq!(second.next, None, "no empty last page");
        let in_a = index.page("a/", None, 10, 100, all);
        assert_eq!(in_a.filters.len(), 2);
        let hidden = index.page("", None, 10, 2, |f| f.starts_with('a'));
        assert_eq!(
            hidden,
            FilterPage {
                filters: vec![],
                next: Some("$x/y".into())
            }
        );
    }
}
