//! Snapshot files: their format, and the directory that holds the current one.
//!
//! A snapshot is a dump of the state-machine column families ([`Cf::SNAPSHOT`]) read through one
//! RocksDB snapshot (a consistent point-in-time view), written to a single file so openraft can
//! send it in chunks by seeking and reading. (A RocksDB checkpoint is a directory of SST files and
//! would need packing into one stream anyway; a dump of the view is the same state, simpler to
//! verify, and independent of RocksDB's on-disk format version.)
//!
//! Format (all integers big-endian):
//!
//! ```text
//! magic        8 bytes  "QUILLSN1"
//! meta_len     u32      then meta_len bytes: codec-encoded SnapshotMeta
//! records      repeated: tag u8 (1 = sm_data, 2 = dedup, 3 = dedup_age), key_len u32, key, value_len u32, value
//! end          tag 0xFF, record count u64
//! ```
//!
//! A file without the end record, with a wrong count or with bytes after it is rejected: a
//! truncated transfer never installs.
//!
//! Directory layout: `current.snap` is the durable snapshot openraft knows about; `build-N.tmp`,
//! `install.tmp` and `incoming-N` are work files, removed at open.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use openraft::SnapshotMeta;

use super::{NodeAddr, NodeId};
use crate::store::{Cf, StoreError, codec};

const MAGIC: &[u8; 8] = b"QUILLSN1";
const TAG_END: u8 = 0xFF;
const CURRENT: &str = "current.snap";
const INSTALL_TMP: &str = "install.tmp";

/// Snapshot metadata for this cluster's types.
pub type Meta = SnapshotMeta<NodeId, NodeAddr>;

fn cf_tag(cf: Cf) -> Option<u8> {
    match cf {
        Cf::SmData => Some(1),
        Cf::Dedup => Some(2),
        Cf::DedupAge => Some(3),
        Cf::Log | Cf::Meta | Cf::SmMeta | Cf::AuditMac => None,
    }
}

fn tag_cf(tag: u8) -> Option<Cf> {
    match tag {
        1 => Some(Cf::SmData),
        2 => Some(Cf::Dedup),
        3 => Some(Cf::DedupAge),
        _ => None,
    }
}

/// The snapshot directory and the metadata of its current (durable) snapshot.
///
/// The lock serialises replacing `current.snap`: a snapshot build runs in its own task while the
/// state machine may be installing one received from the leader.
#[derive(Debug)]
pub struct SnapshotDir {
    dir: PathBuf,
    current: Mutex<Option<Meta>>,
    seq: AtomicU64,
}

impl SnapshotDir {
    /// Open the directory, remove leftover work files and read the current snapshot's header.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        for item in fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
            let item = item.map_err(|e| io_err(dir, e))?;
            let name = item.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".tmp") || name.starts_with("incoming-") {
                fs::remove_file(item.path()).map_err(|e| io_err(&item.path(), e))?;
            }
        }
        let current_path = dir.join(CURRENT);
        let current = match File::open(&current_path) {
            Ok(f) => Some(read_header(&mut BufReader::new(f), &current_path)?),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(io_err(&current_path, e)),
        };
        Ok(Self { dir: dir.to_path_buf(), current: Mutex::new(current), seq: AtomicU64::new(0) })
    }

    /// The path of the current snapshot file.
    pub fn current_path(&self) -> PathBuf {
        self.dir.join(CURRENT)
    }

    /// A fresh path for a work file with the given prefix and suffix.
    pub fn work_path(&self, prefix: &str, suffix: &str) -> PathBuf {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format!("{prefix}{n}{suffix}"))
    }

    /// The path an install copies the received snapshot to before it replaces the current one.
    pub fn install_tmp_path(&self) -> PathBuf {
        self.dir.join(INSTALL_TMP)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Meta>> {
        // A panic while holding the lock cannot leave the Option half-written.
        self.current.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    /// Make the fsynced file at `tmp` the current snapshot, unless `force` is false and the
    /// current one is already at least as recent (a build that raced with an install). Durable on
    /// return: the rename and the directory are fsynced. Returns the snapshot that is current
    /// afterwards, opened under the lock so the file matches the metadata.
    pub fn promote(&self, tmp: &Path, meta: &Meta, force: bool) -> Result<(Meta, File), StoreError> {
        let mut current = self.lock();
        let stale = !force && current.as_ref().is_some_and(|cur| cur.last_log_id >= meta.last_log_id);
        if stale {
            fs::remove_file(tmp).map_err(|e| io_err(tmp, e))?;
        } else {
            let dst = self.current_path();
            fs::rename(tmp, &dst).map_err(|e| io_err(&dst, e))?;
            File::open(&self.dir).and_then(|d| d.sync_all()).map_err(|e| io_err(&self.dir, e))?;
            *current = Some(meta.clone());
        }
        match Self::open_locked(&self.current_path(), &current)? {
            Some(found) => Ok(found),
            None => Err(StoreError::SnapshotFormat { path: self.current_path(), reason: "vanished".into() }),
        }
    }

    /// The current snapshot's metadata and its file, opened at the start.
    pub fn open_current(&self) -> Result<Option<(Meta, File)>, StoreError> {
        let current = self.lock();
        Self::open_locked(&self.current_path(), &current)
    }

    fn open_locked(path: &Path, current: &Option<Meta>) -> Result<Option<(Meta, File)>, StoreError> {
        match current {
            None => Ok(None),
            Some(meta) => Ok(Some((meta.clone(), File::open(path).map_err(|e| io_err(path, e))?))),
        }
    }

    /// Remove received-snapshot work files.
    pub fn remove_incoming(&self) -> Result<(), StoreError> {
        for item in fs::read_dir(&self.dir).map_err(|e| io_err(&self.dir, e))? {
            let item = item.map_err(|e| io_err(&self.dir, e))?;
            if item.file_name().to_string_lossy().starts_with("incoming-") {
                fs::remove_file(item.path()).map_err(|e| io_err(&item.path(), e))?;
            }
        }
        Ok(())
    }
}

/// Writes a snapshot file: header, records, end record, fsync.
pub struct Writer {
    path: PathBuf,
    out: BufWriter<File>,
    count: u64,
}

impl Writer {
    /// Create `path` and write the header for `meta`.
    pub fn create(path: &Path, meta: &Meta) -> Result<Self, StoreError> {
        let file = File::create(path).map_err(|e| io_err(path, e))?;
        let mut w = Self { path: path.to_path_buf(), out: BufWriter::with_capacity(1 << 20, file), count: 0 };
        let meta_bytes = codec::encode(meta).map_err(|e| StoreError::encode("snapshot meta", e))?;
        w.write(MAGIC)?;
        w.write_len(meta_bytes.len())?;
        w.write(&meta_bytes)?;
        Ok(w)
    }

    /// Append one record of a snapshot column family.
    pub fn record(&mut self, cf: Cf, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let tag = cf_tag(cf).ok_or_else(|| StoreError::SnapshotFormat {
            path: self.path.clone(),
            reason: format!("column family `{}` is not part of a snapshot", cf.name()),
        })?;
        self.write(&[tag])?;
        self.write_len(key.len())?;
        self.write(key)?;
        self.write_len(value.len())?;
        self.write(value)?;
        self.count += 1;
        Ok(())
    }

    /// Write the end record and fsync the file.
    pub fn finish(mut self) -> Result<(), StoreError> {
        self.write(&[TAG_END])?;
        let count = self.count.to_be_bytes();
        self.write(&count)?;
        let file = self.out.into_inner().map_err(|e| io_err(&self.path, e.into_error()))?;
        file.sync_all().map_err(|e| io_err(&self.path, e))
    }

    fn write_len(&mut self, len: usize) -> Result<(), StoreError> {
        let len = u32::try_from(len).map_err(|_| StoreError::SnapshotFormat {
            path: self.path.clone(),
            reason: format!("a key or value of {len} bytes does not fit the format"),
        })?;
        self.write(&len.to_be_bytes())
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.out.write_all(bytes).map_err(|e| io_err(&self.path, e))
    }
}

/// One key-value pair of a snapshot column family.
#[derive(Debug)]
pub struct Record {
    /// The column family it belongs to.
    pub cf: Cf,
    /// The key.
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
}

/// Reads a snapshot file record by record.
pub struct Reader {
    path: PathBuf,
    input: BufReader<File>,
    count: u64,
    done: bool,
}

impl Reader {
    /// Open `path` and read its header.
    pub fn open(path: &Path) -> Result<(Meta, Self), StoreError> {
        let file = File::open(path).map_err(|e| io_err(path, e))?;
        Self::from_file(file, path)
    }

    /// Read the header of `file`, already open at its start; `path` names it in errors.
    pub fn from_file(file: File, path: &Path) -> Result<(Meta, Self), StoreError> {
        let mut input = BufReader::with_capacity(1 << 20, file);
        let meta = read_header(&mut input, path)?;
        Ok((meta, Self { path: path.to_path_buf(), input, count: 0, done: false }))
    }

    /// The next record, or `None` after a valid end record. Checks the count and that nothing
    /// follows the end record.
    pub fn next_record(&mut self) -> Result<Option<Record>, StoreError> {
        if self.done {
            return Ok(None);
        }
        let mut tag = [0u8; 1];
        read_exact(&mut self.input, &mut tag, &self.path)?;
        if tag[0] == TAG_END {
            let mut count = [0u8; 8];
            read_exact(&mut self.input, &mut count, &self.path)?;
            let count = u64::from_be_bytes(count);
            if count != self.count {
                return Err(self.bad(format!("end record counts {count} records, file holds {}", self.count)));
            }
            let mut extra = [0u8; 1];
            match self.input.read(&mut extra) {
                Ok(0) => {}
                Ok(_) => return Err(self.bad("bytes after the end record".into())),
                Err(e) => return Err(io_err(&self.path, e)),
            }
            self.done = true;
            return Ok(None);
        }
        let cf = tag_cf(tag[0]).ok_or_else(|| self.bad(format!("unknown record tag {}", tag[0])))?;
        let key = read_chunk(&mut self.input, &self.path)?;
        let value = read_chunk(&mut self.input, &self.path)?;
        self.count += 1;
        Ok(Some(Record { cf, key, value }))
    }

    fn bad(&self, reason: String) -> StoreError {
        StoreError::SnapshotFormat { path: self.path.clone(), reason }
    }
}

/// Read the whole file to check it is well formed; returns its metadata.
pub fn verify(path: &Path) -> Result<Meta, StoreError> {
    let (meta, mut reader) = Reader::open(path)?;
    while reader.next_record()?.is_some() {}
    Ok(meta)
}

fn read_header(input: &mut impl Read, path: &Path) -> Result<Meta, StoreError> {
    let mut magic = [0u8; 8];
    read_exact(input, &mut magic, path)?;
    if &magic != MAGIC {
        return Err(StoreError::SnapshotFormat { path: path.to_path_buf(), reason: "not a Quill snapshot".into() });
    }
    let meta_bytes = read_chunk(input, path)?;
    codec::decode(&meta_bytes)
        .map_err(|reason| StoreError::SnapshotFormat { path: path.to_path_buf(), reason: format!("meta: {reason}") })
}

fn read_chunk(input: &mut impl Read, path: &Path) -> Result<Vec<u8>, StoreError> {
    let mut len = [0u8; 4];
    read_exact(input, &mut len, path)?;
    let len = u32::from_be_bytes(len) as usize;
    // Read through `take` rather than allocating `len` up front: a corrupt length must not
    // allocate gigabytes.
    let mut buf = Vec::new();
    let got = input.take(len as u64).read_to_end(&mut buf).map_err(|e| io_err(path, e))?;
    if got != len {
        return Err(StoreError::SnapshotFormat { path: path.to_path_buf(), reason: "truncated record".into() });
    }
    Ok(buf)
}

fn read_exact(input: &mut impl Read, buf: &mut [u8], path: &Path) -> Result<(), StoreError> {
    input.read_exact(buf).map_err(|e| {
        if e.kind() == ErrorKind::UnexpectedEof {
            StoreError::SnapshotFormat { path: path.to_path_buf(), reason: "truncated file".into() }
        } else {
            io_err(path, e)
        }
    })
}

fn io_err(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::SnapshotIo { path: path.to_path_buf(), source }
}
