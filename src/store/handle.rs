//! The store's sled handles, swappable: what lets the store reopen its database without
//! its users noticing more than a failed write.
//!
//! sled keeps the first I/O error it meets and fails every later operation with it, so a
//! store that met a full disk stays failed until its database is opened again, and sled
//! opens a directory only once every handle of the previous open is gone (they share the
//! file lock). So no user holds a `sled::Tree`: each holds a [`Tree`], a name and a slot
//! the store fills with the tree of its current database. Resolving the slot is one
//! lock-free load ([`arc_swap`]) and a reference count, no lock and no allocation per
//! stored message. While the store reopens, the slots are empty and an operation fails
//! with [`StoreError::Reopening`], as any write of a failing store does.

use std::sync::{Arc, Mutex, Weak};

use arc_swap::ArcSwapOption;

use super::{Store, StoreError};

/// A named tree of the store, resolved through the store's current database.
#[derive(Clone)]
pub struct Tree {
    slot: Arc<Slot>,
    store: Store,
}

/// One tree name and its handle in the current database; empty while reopening.
pub(super) struct Slot {
    name: String,
    tree: ArcSwapOption<sled::Tree>,
}

/// The current database and every tree handed out, for [`super::recovery`] to swap.
#[derive(Default)]
pub(super) struct Handles {
    db: ArcSwapOption<sled::Db>,
    /// Weak: a user that dropped its tree needs no new handle.
    slots: Mutex<Vec<Weak<Slot>>>,
}

impl Handles {
    pub(super) fn new(db: sled::Db) -> Handles {
        Handles {
            db: ArcSwapOption::from_pointee(db),
            slots: Mutex::default(),
        }
    }

    /// The current database; None while reopening.
    pub(super) fn db(&self) -> Option<Arc<sled::Db>> {
        self.db.load_full()
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Vec<Weak<Slot>>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for `name`, filled from the current database.
    pub(super) fn open(&self, name: &str) -> Result<Arc<Slot>, sled::Error> {
        let mut slots = self.slots();
        if let Some(slot) = slots
            .iter()
            .filter_map(Weak::upgrade)
            .find(|s| s.name == name)
        {
            return Ok(slot);
        }
        let tree = match self.db() {
            Some(db) => Some(Arc::new(db.open_tree(name)?)),
            None => None,
        };
        let slot = Arc::new(Slot {
            name: name.to_owned(),
            tree: ArcSwapOption::new(tree),
        });
        slots.retain(|s| s.strong_count() > 0);
        slots.push(Arc::downgrade(&slot));
        Ok(slot)
    }

    /// Empties every slot and gives up the database, so that once operations in flight
    /// end, nothing of ours holds sled's files.
    pub(super) fn release(&self) {
        let slots = self.slots();
        for slot in slots.iter().filter_map(Weak::upgrade) {
            slot.tree.store(None);
        }
        self.db.store(None);
    }

    /// Installs a newly opened database and fills every slot from it.
    pub(super) fn install(&self, db: sled::Db) -> Result<(), sled::Error> {
        let slots = self.slots();
        let mut trees = Vec::new();
        for slot in slots.iter().filter_map(Weak::upgrade) {
            trees.push((db.open_tree(&slot.name)?, slot));
        }
        for (tree, slot) in trees {
            slot.tree.store(Some(Arc::new(tree)));
        }
        self.db.store(Some(Arc::new(db)));
        Ok(())
    }
}

impl Tree {
    pub(super) fn new(slot: Arc<Slot>, store: Store) -> Tree {
        Tree { slot, store }
    }

    /// The tree in the store's current database. Hold it for one operation (or one
    /// iteration) only: a reopen waits until every handle of the old database is gone.
    pub fn current(&self) -> Result<Arc<sled::Tree>, StoreError> {
        self.slot
            .tree
            .load_full()
            .ok_or_else(|| self.store.reopening())
    }

    /// Wraps a sled error as the store does ([`Store::io`]).
    pub fn io(&self, source: sled::Error) -> StoreError {
        self.store.io(source)
    }

    pub fn name(&self) -> &str {
        &self.slot.name
    }
}
