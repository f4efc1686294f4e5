//! SQLite opened the one way every Cairn store opens it (the receipt log, the payment store, the
//! verdict store, the embedded chain): write-ahead log, so readers never wait behind the writer;
//! a busy timeout, so a second connection waits for a lock instead of failing; and the
//! durability the store asks for. [`Shared`] is a connection several tasks use in turn.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::Connection;

/// How long a statement waits for another connection's lock before it fails.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// What a commit survives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// The machine losing power: every commit waits for the disk.
    Full,
    /// The process dying; an OS crash may cost the last commits.
    Normal,
}

/// Opens (creating) the database at `path` in WAL mode with [`BUSY_TIMEOUT`] and `durability`.
pub fn open(path: &Path, durability: Durability) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    let synchronous = match durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", synchronous)?;
    Ok(conn)
}

/// A connection shared by tasks that take turns with it. A task that panicked while holding it
/// leaves it usable: SQLite rolled back whatever that task had not committed.
pub struct Shared(Mutex<Connection>);

impl Shared {
    /// Shares `conn`.
    pub fn new(conn: Connection) -> Self {
        Self(Mutex::new(conn))
    }

    /// The connection, once no one else holds it.
    pub fn lock(&self) -> MutexGuard<'_, Connection> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_in_wal_with_the_asked_durability_and_a_busy_timeout() {
        let dir = tempfile::tempdir().unwrap();
        for (d, level) in [(Durability::Full, 2), (Durability::Normal, 1)] {
            let c = open(&dir.path().join(format!("{d:?}.sqlite")), d).unwrap();
            let mode: String = c
                .pragma_query_value(None, "journal_mode", |r| r.get(0))
                .unwrap();
            assert_eq!(mode, "wal");
            let sync: i64 = c
                .pragma_query_value(None, "synchronous", |r| r.get(0))
                .unwrap();
            assert_eq!(sync, level);
            let busy: i64 = c
                .pragma_query_value(None, "busy_timeout", |r| r.get(0))
                .unwrap();
            assert_eq!(busy, BUSY_TIMEOUT.as_millis() as i64);
        }
    }

    #[test]
    fn a_panic_while_holding_the_connection_leaves_it_usable() {
        let shared = std::sync::Arc::new(Shared::new(Connection::open_in_memory().unwrap()));
        let s = shared.clone();
        let _ = std::thread::spawn(move || {
            let _c = s.lock();
            panic!("a task fails while holding the connection");
        })
        .join();
        let one: i64 = shared
            .lock()
            .query_row("SELECT 1", [], |r| r.get(0))
            .unwrap();
        assert_eq!(one, 1);
    }
}
