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

/// How long [`open_exclusive`] waits for another owner of the file (a process still stopping).
pub const EXCLUSIVE_WAIT: Duration = Duration::from_secs(1);

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
    open_with(path, durability, false)
}

/// Like [`open`], for a store that keeps state in memory beside the file and so must be its only
/// user: the connection locks the file for as long as it is open (`locking_mode=EXCLUSIVE`, set
/// before WAL so the WAL index lives in the process's memory and no lock is taken per
/// transaction). A second connection, from this process or another, fails with
/// `SQLITE_BUSY`; opening waits [`EXCLUSIVE_WAIT`] for a previous owner to let go.
pub fn open_exclusive(path: &Path, durability: Durability) -> rusqlite::Result<Connection> {
    open_with(path, durability, true)
}

fn open_with(path: &Path, durability: Durability, exclusive: bool) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(if exclusive {
        EXCLUSIVE_WAIT
    } else {
        BUSY_TIMEOUT
    })?;
    if exclusive {
        conn.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
    }
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
    fn an_exclusive_store_keeps_out_a_second_connection_until_it_closes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.sqlite");
        let a = open_exclusive(&path, Durability::Normal).unwrap();
        a.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
            .unwrap();
        let b = Connection::open(&path).unwrap();
        b.busy_timeout(Duration::from_millis(50)).unwrap();
        let e = b
            .query_row("SELECT x FROM t", [], |r| r.get::<_, i64>(0))
            .unwrap_err();
        assert_eq!(
            e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseBusy),
            "{e}"
        );
        drop(a);
        let again = open_exclusive(&path, Durability::Normal).unwrap();
        let x: i64 = again
            .query_row("SELECT x FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(x, 1);
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
