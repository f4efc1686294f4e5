//! The entry's run records, in SQLite: signed records by id, never changed once written.

use std::path::Path;

use alloy_primitives::B256;

use crate::record::SignedRecord;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite.
    #[error("the run store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The file system.
    #[error("the entry's data dir: {0}")]
    Io(std::io::Error),
}

/// The run records.
pub struct RunStore(cairn_sqlite::Shared);

impl RunStore {
    /// Opens (creating) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = cairn_sqlite::open(path, cairn_sqlite::Durability::Normal)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS runs (
                id BLOB PRIMARY KEY,
                created_at INTEGER NOT NULL,
                signed TEXT NOT NULL
            )",
        )?;
        Ok(Self(cairn_sqlite::Shared::new(conn)))
    }

    /// Keeps a signed record.
    pub fn put(&self, r: &SignedRecord, created_at: u64) -> Result<(), StoreError> {
        let text = serde_json::to_string(r).expect("serializes");
        self.0.lock().execute(
            "INSERT OR IGNORE INTO runs (id, created_at, signed) VALUES (?1, ?2, ?3)",
            rusqlite::params![r.id.as_slice(), created_at as i64, text],
        )?;
        Ok(())
    }

    /// A signed record's JSON text by id.
    pub fn get(&self, id: B256) -> Result<Option<String>, StoreError> {
        use rusqlite::OptionalExtension;
        Ok(self
            .0
            .lock()
            .query_row(
                "SELECT signed FROM runs WHERE id = ?1",
                [id.as_slice()],
                |row| row.get(0),
            )
            .optional()?)
    }
}
