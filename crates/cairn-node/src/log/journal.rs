//! The receipt journal: append-only segment files a group commit writes its entries to, one
//! `write` per group (and with [`Durability::Full`] one `fdatasync`), so an answer never waits
//! for SQLite's B-trees or its WAL checkpoints. SQLite is filled from the entries kept in
//! memory; the files are read back only when the log opens, to index what SQLite had not taken
//! when the process stopped.
//!
//! A segment is a run of records `len (u32 LE) | crc32 (u32 LE) | body`; a body starts with
//! the entry's sequence number (counted from 1 in each run of the process; segments are
//! numbered across runs). A record cut short by the end of the file is the write a stopped
//! process was making, never answered, and is skipped. A record failing its checksum inside
//! the file is damage: what follows it is not read, and the segment is kept beside the log as
//! `NNNN.seg.damaged` for an operator instead of being deleted. A whole record that does not
//! decode (a newer version's) stops the log from opening.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::*;

/// Bytes after which the next group goes to a new segment (the old one is deleted once
/// SQLite holds all of it).
pub(super) const SEGMENT_BYTES: u64 = 32 << 20;
/// Segments a segment may grow to when starting the next keeps failing, before writes are
/// refused: a segment is read whole when the log opens.
const SEGMENT_CAP: u64 = 4;
/// Layout of a record body; another value is refused, not misread.
const VERSION: u8 = 1;
/// A record claiming more than this is damage, not an entry.
const MAX_RECORD: usize = 1 << 31;

/// The segment being written.
pub(super) struct Journal {
    dir: PathBuf,
    file: File,
    number: u64,
    len: u64,
    /// Sequence number of the last entry written.
    last: u64,
    durability: Durability,
    /// Why the journal takes no more writes (a failed `fdatasync` leaves the page cache in a
    /// state nothing can trust; the process must start again).
    broken: Option<String>,
}

/// Why a segment could not be read or written.
#[derive(Debug, thiserror::Error)]
pub(super) enum JournalError {
    #[error("receipt journal {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("receipt journal {path}, record at byte {at}: {why}")]
    Bad {
        path: PathBuf,
        at: u64,
        why: &'static str,
    },
}

impl From<JournalError> for LogError {
    fn from(e: JournalError) -> Self {
        LogError::Journal(e.to_string())
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The segment files in `dir` (number, path), oldest first.
pub(super) fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, JournalError> {
    let mut out = Vec::new();
    for item in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = item.map_err(io(dir))?.path();
        let number = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".seg"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(number) = number {
            out.push((number, path));
        }
    }
    out.sort();
    Ok(out)
}

/// Where segment `number` of the journal in `dir` is.
pub(super) fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:016}.seg"))
}

/// Takes the journal directory `dir`'s lock (created if missing), waiting up to 5 s for a
/// log being dropped in this process: two logs writing and deleting one journal would lose
/// receipts. Held until the returned file is dropped.
pub(super) fn lock(dir: &Path) -> Result<File, JournalError> {
    use std::os::fd::AsRawFd;
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let path = dir.join("lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io(&path))?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(file);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::WouldBlock {
            // Not held by anyone: the file system cannot lock (some network mounts).
            return Err(JournalError::Io {
                path,
                source: std::io::Error::new(
                    e.kind(),
                    format!(
                        "{e}: the receipt log's lock file cannot be locked on this file system; \
                         put --data-dir on a local disk"
                    ),
                ),
            });
        }
        if std::time::Instant::now() >= deadline {
            return Err(JournalError::Io {
                path,
                source: std::io::Error::new(
                    e.kind(),
                    format!("{e}: another node uses this data directory; stop it first"),
                ),
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Makes a created or removed file's name durable.
fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

impl Journal {
    /// Starts segment `number` in `dir` (created if missing), its first entry numbered 1.
    pub(super) fn create(
        dir: &Path,
        number: u64,
        durability: Durability,
    ) -> Result<Self, JournalError> {
        Self::create_after(dir, number, 0, durability)
    }

    /// Starts segment `number`, its first entry numbered `last + 1`.
    fn create_after(
        dir: &Path,
        number: u64,
        last: u64,
        durability: Durability,
    ) -> Result<Self, JournalError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        if durability == Durability::Full
            && let Some(parent) = dir.parent()
        {
            sync_dir(parent)?;
        }
        let path = segment_path(dir, number);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        if durability == Durability::Full {
            sync_dir(dir)?;
        }
        Ok(Self {
            dir: dir.to_owned(),
            file,
            number,
            len: 0,
            last,
            durability,
            broken: None,
        })
    }

    /// Sequence number of the last entry written.
    pub(super) fn last(&self) -> u64 {
        self.last
    }

    /// Writes the group `entries` (numbered on from [`Self::last`]) as one write, waiting for
    /// the disk if the journal is [`Durability::Full`]. Returns the number of the segment they
    /// went to and, when that segment is now full, the one closed by starting the next.
    pub(super) fn write(&mut self, entries: &[&Entry]) -> Result<Written, String> {
        if let Some(why) = &self.broken {
            return Err(why.clone());
        }
        if self.len >= SEGMENT_CAP * SEGMENT_BYTES {
            return Err(format!(
                "receipt journal {}: no new segment could be started and this one is full; \
                 nothing was kept (see the log for why, e.g. out of file descriptors or disk)",
                self.path().display()
            ));
        }
        let mut buf = Vec::with_capacity(entries.iter().map(|e| e.encoded_len() + 8).sum());
        for (i, e) in entries.iter().enumerate() {
            let start = buf.len();
            buf.extend_from_slice(&[0; 8]);
            e.encode(self.last + 1 + i as u64, &mut buf);
            let body = &buf[start + 8..];
            let (len, crc) = (body.len() as u32, crc32fast::hash(body));
            buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
            buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
        }
        let path = segment_path(&self.dir, self.number);
        if let Err(e) = self.file.write_all(&buf) {
            // Cut back what part of the group was written, so the segment stays whole.
            if let Err(cut) = self.file.set_len(self.len) {
                self.broken = Some(format!(
                    "receipt journal {}: a write failed ({e}) and could not be cut back \
                     ({cut}); restart the node",
                    path.display()
                ));
            }
            return Err(format!("receipt journal {}: {e}", path.display()));
        }
        if self.durability == Durability::Full
            && let Err(e) = self.file.sync_data()
        {
            // Its callers are told it failed: the group must not be indexed at the next open.
            let _ = self.file.set_len(self.len);
            let why = format!(
                "receipt journal {}: waiting for the disk failed ({e}); restart the node",
                path.display()
            );
            self.broken = Some(why.clone());
            return Err(why);
        }
        self.len += buf.len() as u64;
        self.last += entries.len() as u64;
        let mut written = Written {
            closed: None,
            last: self.last,
        };
        if self.len >= SEGMENT_BYTES {
            match Journal::create_after(&self.dir, self.number + 1, self.last, self.durability) {
                Ok(next) => {
                    written.closed = Some(Closed {
                        path: std::mem::replace(self, next).path(),
                        last: self.last,
                    });
                }
                // The group is written; the next one tries again.
                Err(e) => tracing::warn!(error = %e, "receipt journal: starting a segment"),
            }
        }
        Ok(written)
    }

    fn path(&self) -> PathBuf {
        segment_path(&self.dir, self.number)
    }
}

/// What [`Journal::write`] did.
pub(super) struct Written {
    /// The segment it closed, if it started a new one.
    pub(super) closed: Option<Closed>,
    /// Sequence number of the group's last entry.
    pub(super) last: u64,
}

/// A segment no longer written: deleted once SQLite holds its last entry.
pub(super) struct Closed {
    pub(super) path: PathBuf,
    pub(super) last: u64,
}

/// What [`replay`] read of a segment.
pub(super) struct Replayed {
    /// A record inside the file failed its checksum: what followed it was not read.
    pub(super) damaged: bool,
}

/// Reads segment `path`'s entries in order, handing each to `each`, until its end, a record
/// the end of the file cuts short (skipped: never answered), or a damaged one (warned about;
/// see [`Replayed::damaged`]). A whole record that does not decode is an error.
pub(super) fn replay(
    path: &Path,
    mut each: impl FnMut(Entry) -> Result<(), LogError>,
) -> Result<Replayed, LogError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Replayed { damaged: false });
        }
        Err(e) => return Err(io(path)(e).into()),
    };
    let mut damaged = false;
    let mut at = 0usize;
    while at < bytes.len() {
        let bad = |why| JournalError::Bad {
            path: path.to_owned(),
            at: at as u64,
            why,
        };
        // Err(true): damage inside the file; Err(false): the end of the file cuts it short.
        let record = (|| {
            let head = bytes.get(at..at + 8).ok_or(false)?;
            let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes")) as usize;
            let crc = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
            if len > MAX_RECORD {
                return Err(true);
            }
            let body = bytes.get(at + 8..at + 8 + len).ok_or(false)?;
            if crc32fast::hash(body) != crc {
                return Err(true);
            }
            Ok((len, body))
        })();
        match record {
            Ok((len, body)) => {
                let (_, entry) = Entry::decode(body).map_err(|why| {
                    LogError::from(bad(why)).with_hint(
                        "written by a newer version? run that version, or move the journal \
                         aside to start without it",
                    )
                })?;
                each(entry)?;
                at += 8 + len;
            }
            Err(inside) => {
                damaged = inside;
                if inside {
                    tracing::error!(
                        error = %bad("checksum mismatch or impossible length"),
                        unread = bytes.len() - at,
                        "receipt journal: a damaged record; what follows it is kept unread"
                    );
                } else {
                    tracing::warn!(
                        path = %path.display(),
                        skipped = bytes.len() - at,
                        "receipt journal: a record cut short by a stop, skipped (never answered)"
                    );
                }
                break;
            }
        }
    }
    Ok(Replayed { damaged })
}

/// Removes a segment SQLite holds all of.
pub(super) fn remove(path: &Path) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(error = %e, path = %path.display(), "receipt journal: removing a segment");
    }
}

impl Entry {
    fn encoded_len(&self) -> usize {
        let receipt = match &self.receipt {
            EntryReceipt::Signed(_, Some(c)) => c.as_bytes().len(),
            EntryReceipt::Signed(j, None) => j.as_str().len(),
            EntryReceipt::Kept(StoredReceipt::Compact(c)) => c.as_bytes().len(),
            EntryReceipt::Kept(StoredReceipt::Json(j)) => j.as_str().len(),
            EntryReceipt::ToSign(_) => 0,
        };
        1 + 8
            + 4 * 6
            + self.id.len()
            + 8
            + self.model.len()
            + 1
            + receipt
            + self.input.len()
            + self.output.len()
            + 32
            + self.price.len()
            + 1
            + 21
            + 32
    }

    /// Appends the record body of this (signed) entry, numbered `seq`.
    fn encode(&self, seq: u64, out: &mut Vec<u8>) {
        fn bytes(out: &mut Vec<u8>, b: &[u8]) {
            out.extend_from_slice(&(b.len() as u32).to_le_bytes());
            out.extend_from_slice(b);
        }
        out.push(VERSION);
        out.extend_from_slice(&seq.to_le_bytes());
        bytes(out, self.id.as_bytes());
        out.extend_from_slice(&self.created_at.to_le_bytes());
        bytes(out, self.model.as_bytes());
        let (kind, receipt): (u8, &[u8]) = match &self.receipt {
            EntryReceipt::Signed(_, Some(c)) | EntryReceipt::Kept(StoredReceipt::Compact(c)) => {
                (1, c.as_bytes())
            }
            EntryReceipt::Signed(j, None) | EntryReceipt::Kept(StoredReceipt::Json(j)) => {
                (0, j.as_str().as_bytes())
            }
            // Signed before it is written (the group is sealed first).
            EntryReceipt::ToSign(_) => (2, &[]),
        };
        out.push(kind);
        bytes(out, receipt);
        bytes(out, &self.input);
        bytes(out, &self.output);
        out.extend_from_slice(&self.digest);
        bytes(out, self.price.as_bytes());
        out.push(self.billing.code());
        match &self.payer {
            Some(p) => {
                out.push(1);
                out.extend_from_slice(p);
            }
            None => out.extend_from_slice(&[0; 21]),
        }
        out.extend_from_slice(&self.payment_ref);
    }

    /// The entry a record body holds, and its sequence number.
    fn decode(body: &[u8]) -> Result<(u64, Entry), &'static str> {
        struct R<'a>(&'a [u8]);
        impl<'a> R<'a> {
            fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
                if self.0.len() < n {
                    return Err("body cut short");
                }
                let (head, rest) = self.0.split_at(n);
                self.0 = rest;
                Ok(head)
            }
            fn array<const N: usize>(&mut self) -> Result<[u8; N], &'static str> {
                Ok(self.take(N)?.try_into().expect("N bytes"))
            }
            fn bytes(&mut self) -> Result<&'a [u8], &'static str> {
                let n = u32::from_le_bytes(self.array()?) as usize;
                self.take(n)
            }
            fn text(&mut self) -> Result<String, &'static str> {
                String::from_utf8(self.bytes()?.to_vec()).map_err(|_| "text is not UTF-8")
            }
        }
        let mut r = R(body);
        if r.array::<1>()?[0] != VERSION {
            return Err("unknown record version");
        }
        let seq = u64::from_le_bytes(r.array()?);
        let id = r.text()?;
        let created_at = i64::from_le_bytes(r.array()?);
        let model = r.text()?;
        let kind = r.array::<1>()?[0];
        let receipt = r.bytes()?;
        let receipt = match kind {
            1 => StoredReceipt::Compact(CompactReceipt::from_bytes(receipt.to_vec())),
            0 => StoredReceipt::Json(
                ReceiptJson::from_text(
                    String::from_utf8(receipt.to_vec()).map_err(|_| "receipt is not UTF-8")?,
                )
                .map_err(|_| "receipt is not JSON")?,
            ),
            _ => return Err("unsigned receipt"),
        };
        let input = r.bytes()?.to_vec();
        let output = r.bytes()?.to_vec();
        let digest = r.array()?;
        let price = r.text()?;
        let billing = Billing::from_code(r.array::<1>()?[0]).ok_or("unknown billing")?;
        let payer = r.array::<21>()?;
        let payment_ref = r.array()?;
        if !r.0.is_empty() {
            return Err("bytes after the entry");
        }
        Ok((
            seq,
            Entry {
                id,
                created_at,
                model,
                receipt: EntryReceipt::Kept(receipt),
                input,
                output,
                digest,
                price,
                billing,
                payer: (payer[0] == 1).then(|| payer[1..].try_into().expect("20 bytes")),
                payment_ref,
            },
        ))
    }
}
