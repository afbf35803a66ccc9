//! Remembers message ids so a captured envelope cannot be delivered twice unseen.

use std::collections::{HashSet, VecDeque};

use crate::{Binding, OpenError};

/// The last `capacity` (sender, message id) pairs. Bounded: the oldest are forgotten
/// first, so a replay older than that window is not caught here (history readers
/// dedupe by the daemon's sequence numbers instead).
#[derive(Debug)]
pub struct ReplayGuard {
    seen: HashSet<(String, String)>,
    order: VecDeque<(String, String)>,
    capacity: usize,
}

impl ReplayGuard {
    pub fn new(capacity: usize) -> ReplayGuard {
        ReplayGuard {
            seen: HashSet::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Records the binding's id, or says it was seen. Call only for an authenticated
    /// binding: otherwise anyone could fill the window with ids of their choosing.
    pub fn admit(&mut self, binding: &Binding) -> Result<(), OpenError> {
        let id = (binding.from.clone(), binding.mid.clone());
        if self.seen.contains(&id) {
            return Err(OpenError::Replayed {
                from: id.0,
                mid: id.1,
            });
        }
        if self.order.len() == self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        self.seen.insert(id.clone());
        self.order.push_back(id);
        Ok(())
    }
}

impl Default for ReplayGuard {
    fn default() -> Self {
        ReplayGuard::new(10_000)
    }
}
