//! A collector's connections to its store: one for an SQLite file (it takes one writer at
//! a time anyway), several for PostgreSQL, so that one slow statement (a large batch, a
//! console query) does not hold every request of the collector behind it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, TryLockError};

use anyhow::{anyhow, Result};

use crate::db::Location;
use crate::store::Store;

/// Connections a collector keeps to a PostgreSQL store.
const POSTGRES_CONNECTIONS: usize = 4;

pub struct Stores {
    stores: Vec<Mutex<Store>>,
    next: AtomicUsize,
}

impl Stores {
    /// Opens (and migrates, once) the store: as many connections as its kind serves well.
    pub fn open(location: &Location) -> Result<Stores> {
        let n = match location {
            Location::Sqlite(_) => 1,
            Location::Postgres(_) => POSTGRES_CONNECTIONS,
        };
        let mut stores = Vec::with_capacity(n);
        for _ in 0..n {
            stores.push(Mutex::new(Store::open(location)?));
        }
        Ok(Stores {
            stores,
            next: AtomicUsize::new(0),
        })
    }

    /// Runs `f` on a free connection, else waits for one (taken in turn).
    pub fn with<T>(&self, f: impl FnOnce(&mut Store) -> Result<T>) -> Result<T> {
        let n = self.stores.len().max(1);
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        for i in 0..n {
            let Some(m) = self.stores.get((start + i) % n) else {
                continue;
            };
            match m.try_lock() {
                Ok(mut s) => return f(&mut s),
                Err(TryLockError::WouldBlock) => {}
                Err(TryLockError::Poisoned(_)) => return Err(unusable()),
            }
        }
        let mut s: MutexGuard<'_, Store> = self
            .stores
            .get(start)
            .ok_or_else(|| anyhow!("the collector has no connection to its store"))?
            .lock()
            .map_err(|_| unusable())?;
        f(&mut s)
    }
}

fn unusable() -> anyhow::Error {
    anyhow!("the store is unusable after an earlier failure")
}
