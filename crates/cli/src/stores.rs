//! A collector's connections to its store: one for an SQLite file (it takes one writer at
//! a time anyway), several for PostgreSQL, so that one slow statement (a large batch, a
//! console query) does not hold every request of the collector behind it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, TryLockError};
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::db::{DbError, Location};
use crate::store::Store;

/// How long a request waits for a connection before the store counts as unavailable: as
/// long as one statement may take.
const WAIT: Duration = Duration::from_secs(30);

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

    /// Runs `f` on a free connection, else waits for one up to [`WAIT`]; past that the
    /// store counts as unavailable (503), so requests do not queue without end behind a
    /// slow database.
    pub fn with<T>(&self, f: impl FnOnce(&mut Store) -> Result<T>) -> Result<T> {
        self.with_deadline(WAIT, f)
    }

    /// [`Stores::with`], waiting at most `wait` for a connection.
    pub fn with_deadline<T>(
        &self,
        wait: Duration,
        f: impl FnOnce(&mut Store) -> Result<T>,
    ) -> Result<T> {
        let n = self.stores.len().max(1);
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let deadline = Instant::now() + wait;
        let mut pause = Duration::from_millis(1);
        loop {
            for i in 0..n {
                let Some(m) = self.stores.get((start + i) % n) else {
                    continue;
                };
                match m.try_lock() {
                    Ok(mut s) => return f(&mut s),
                    Err(TryLockError::WouldBlock) => {}
                    Err(TryLockError::Poisoned(p)) => {
                        // A panic left it mid-work: end whatever transaction it had open,
                        // and go on with it rather than fail every request from now on.
                        let mut s = p.into_inner();
                        s.db().abandon();
                        m.clear_poison();
                        return f(&mut s);
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(DbError::Unavailable(format!(
                    "every connection to the store stayed busy for {} s",
                    wait.as_secs()
                ))
                .into());
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_waits_for_a_connection_only_so_long() {
        let dir = tempfile::tempdir().unwrap();
        let stores = Stores::open(&Location::Sqlite(dir.path().join("t.db"))).unwrap();
        std::thread::scope(|s| {
            let (release, held) = std::sync::mpsc::channel::<()>();
            let (taken, wait_taken) = std::sync::mpsc::channel::<()>();
            let shared = &stores;
            s.spawn(move || {
                shared
                    .with(|_| {
                        taken.send(()).unwrap();
                        held.recv().ok();
                        Ok(())
                    })
                    .unwrap()
            });
            wait_taken.recv().unwrap();
            let e = stores
                .with_deadline(Duration::from_millis(100), |s| s.check())
                .err()
                .unwrap();
            assert!(crate::db::is_unavailable(&e), "{e:#}");
            release.send(()).unwrap();
        });
        stores.with(|s| s.check()).unwrap();
    }
}
