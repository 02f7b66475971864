//! Offline backup and restore of the whole store.
//!
//! The format (`stepcache-backup`, version 1) is a byte stream:
//!
//! ```text
//! header   "stepcache-backup 1\n"                      (ASCII: format name, version)
//! ids      'I' u64                                     every ID in the backup is <= it
//! record   'K' u32 key_len, key, u32 value_len, value  (zero or more, in key order)
//! trailer  'E' u64 record_count, [32 bytes] BLAKE3     of every byte before the hash
//! ```
//!
//! Integers are big-endian. Records are the raw key/values of the one sled
//! tree (every record kind and index: artifacts, executions, events, cache
//! entries, reservations, external ids, ...), so a restore is exact. Nothing
//! may follow the trailer. A backup that is truncated, corrupted or extended
//! fails its count or checksum and is refused before the restored store can
//! be used: `import` clears what it wrote.
//!
//! All or nothing: `import_dir` writes `IMPORT_MARKER` into the data
//! directory before it writes anything else, and removes it only after the
//! restored store is flushed and closed. `Store::open` (serve, check,
//! export) refuses a directory holding it, so a killed import leaves a
//! directory nothing serves from; importing into it again starts over.
//!
//! IDs: sled's ID generator is not part of the tree, and a new store's starts
//! again at 0. `import` therefore stores the backup's ID high-water mark under
//! `keys::META_ID_FLOOR`, and `Store::allocate` generates above it.

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};

use super::{keys, Store, StoreConfig};
use crate::clock::SystemClock;

pub const MAGIC: &[u8] = b"stepcache-backup 1\n";
/// The file that says an import into its directory has not completed.
pub const IMPORT_MARKER: &str = "IMPORT-IN-PROGRESS";
const TAG_IDS: u8 = b'I';
const TAG_RECORD: u8 = b'K';
const TAG_END: u8 = b'E';
/// Larger keys or values are taken as corruption (values are bounded by the
/// gRPC message limit, far below this).
const MAX_LEN: u64 = 1 << 30;
/// Records written per sled batch on import.
const BATCH: usize = 10_000;

/// What an export or import moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub records: u64,
    /// Every ID in the store is at or below it.
    pub id_high_water: u64,
}

/// Writes, and hashes, everything that goes out.
struct HashingWriter<W> {
    inner: W,
    hasher: blake3::Hasher,
}

impl<W: Write> HashingWriter<W> {
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.hasher.update(bytes);
        self.inner.write_all(bytes)
    }
}

/// Reads, and hashes, everything that comes in.
struct HashingReader<R> {
    inner: R,
    hasher: blake3::Hasher,
}

impl<R: Read> HashingReader<R> {
    fn exact<const N: usize>(&mut self, what: &str) -> anyhow::Result<[u8; N]> {
        let mut buf = [0u8; N];
        self.inner
            .read_exact(&mut buf)
            .map_err(|e| truncated(e, what))?;
        self.hasher.update(&buf);
        Ok(buf)
    }

    fn u32(&mut self, what: &str) -> anyhow::Result<u32> {
        Ok(u32::from_be_bytes(self.exact(what)?))
    }

    fn u64(&mut self, what: &str) -> anyhow::Result<u64> {
        Ok(u64::from_be_bytes(self.exact(what)?))
    }

    fn bytes(&mut self, len: u64, what: &str) -> anyhow::Result<Vec<u8>> {
        if len > MAX_LEN {
            bail!("the backup is corrupted: {what} claims {len} bytes");
        }
        // Grows as bytes arrive: a corrupted length cannot allocate ahead.
        let mut buf = Vec::new();
        (&mut self.inner).take(len).read_to_end(&mut buf)?;
        if buf.len() as u64 != len {
            bail!("the backup is truncated: it ends inside {what}");
        }
        self.hasher.update(&buf);
        Ok(buf)
    }
}

fn truncated(e: io::Error, what: &str) -> anyhow::Error {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        anyhow::anyhow!("the backup is truncated: it ends before {what}")
    } else {
        anyhow::Error::new(e).context(format!("reading {what}"))
    }
}

fn open(data_dir: &Path) -> anyhow::Result<Store> {
    let store = Store::open(data_dir, &StoreConfig::default(), Arc::new(SystemClock))?;
    Ok(store)
}

/// `stepcache export`: opens the store at `data_dir` (refused while a server
/// holds it) and writes the backup to `out`.
pub fn export_dir(data_dir: &Path, out: impl Write) -> anyhow::Result<Summary> {
    if !data_dir.join("conf").exists() {
        bail!("no stepcache store at {}", data_dir.display());
    }
    let store = open(data_dir)?;
    let summary = store
        .export(out)
        .with_context(|| format!("exporting {}", data_dir.display()))?;
    store.close()?;
    Ok(summary)
}

/// `stepcache import`: restores a backup into a new or empty store at
/// `data_dir`, or into one a killed import left (it starts over). A directory
/// it created is removed again when the import fails.
pub fn import_dir(data_dir: &Path, input: impl Read) -> anyhow::Result<Summary> {
    let created = !data_dir.exists();
    let result = import_marked(data_dir, input);
    if result.is_err() && created {
        let _ = std::fs::remove_dir_all(data_dir);
    }
    result.with_context(|| format!("importing into {}", data_dir.display()))
}

/// The import between its marker's writing and its removal; the marker stays
/// when the store may hold part of the backup.
fn import_marked(data_dir: &Path, input: impl Read) -> anyhow::Result<Summary> {
    let marker = data_dir.join(IMPORT_MARKER);
    let again = marker.exists();
    let store = Store::open_unchecked(data_dir, &StoreConfig::default(), Arc::new(SystemClock))?;
    if again {
        store
            .clear_all()
            .context("clearing what a killed import left")?;
    } else {
        store.ensure_empty()?;
        mark(data_dir, &marker)?;
    }
    let imported = store.import(input);
    // A failed import clears the store (`Store::import`): whole again if so.
    let whole = imported.is_ok() || store.tree.is_empty();
    store.close()?;
    if whole {
        std::fs::remove_file(&marker)
            .and_then(|()| sync_dir(data_dir))
            .with_context(|| format!("removing {}", marker.display()))?;
    }
    imported
}

/// Writes the import marker into `dir` (created if missing), durably.
fn mark(dir: &Path, marker: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::File::create(marker)
        .and_then(|f| f.sync_all())
        .and_then(|()| sync_dir(dir))
        .with_context(|| format!("writing {}", marker.display()))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

impl Store {
    /// The highest ID this store may have handed out so far. Consumes one
    /// value of sled's generator (harmless: IDs need not be contiguous).
    fn id_high_water(&self) -> anyhow::Result<u64> {
        let floor = match self.tree.get(keys::META_ID_FLOOR)? {
            Some(v) => keys::read_u64(&v, 0)?,
            None => 0,
        };
        // allocate hands out floor + g + 1 for every g generated before this one.
        Ok(floor.saturating_add(self.db.generate_id()?))
    }

    /// Writes the whole store to `out` in the format above. Meant for a store
    /// no server has open (the directory lock makes sure of it).
    pub fn export(&self, out: impl Write) -> anyhow::Result<Summary> {
        let mut w = HashingWriter {
            inner: io::BufWriter::new(out),
            hasher: blake3::Hasher::new(),
        };
        let id_high_water = self.id_high_water()?;
        w.put(MAGIC)?;
        w.put(&[TAG_IDS])?;
        w.put(&id_high_water.to_be_bytes())?;
        let mut records = 0u64;
        for item in self.tree.iter() {
            let (k, v) = item?;
            w.put(&[TAG_RECORD])?;
            w.put(&u32::try_from(k.len())?.to_be_bytes())?;
            w.put(&k)?;
            w.put(&u32::try_from(v.len())?.to_be_bytes())?;
            w.put(&v)?;
            records += 1;
        }
        w.put(&[TAG_END])?;
        w.put(&records.to_be_bytes())?;
        let hash = w.hasher.finalize();
        w.inner.write_all(hash.as_bytes())?;
        w.inner.flush()?;
        Ok(Summary {
            records,
            id_high_water,
        })
    }

    /// Restores a backup into this store, which must be empty. On any error
    /// (a truncated or corrupted backup included) the store is left empty.
    pub fn import(&self, input: impl Read) -> anyhow::Result<Summary> {
        self.ensure_empty()?;
        match self.import_records(input) {
            Ok(summary) => {
                self.db.flush()?;
                Ok(summary)
            }
            Err(e) => {
                self.clear_all().context("clearing a failed import")?;
                self.db.flush()?;
                Err(e)
            }
        }
    }

    /// An error unless the store holds no record.
    fn ensure_empty(&self) -> anyhow::Result<()> {
        if let Some(item) = self.tree.iter().next() {
            let (k, _) = item?;
            bail!(
                "the store is not empty (it holds a record {}): import only into a new \
                 or empty data directory",
                hex::encode(&k[..k.len().min(16)])
            );
        }
        Ok(())
    }

    fn import_records(&self, input: impl Read) -> anyhow::Result<Summary> {
        let mut r = HashingReader {
            inner: io::BufReader::new(input),
            hasher: blake3::Hasher::new(),
        };
        let mut magic = Vec::with_capacity(MAGIC.len());
        (&mut r.inner)
            .take(MAGIC.len() as u64)
            .read_to_end(&mut magic)?;
        if magic.len() < MAGIC.len() && MAGIC.starts_with(&magic) {
            bail!("the backup is truncated: it ends inside the header");
        }
        if magic != MAGIC {
            if magic.starts_with(b"stepcache-backup ") {
                bail!(
                    "unsupported backup version {:?}: this stepcache reads {:?}",
                    String::from_utf8_lossy(&magic).trim(),
                    String::from_utf8_lossy(MAGIC).trim()
                );
            }
            bail!("not a stepcache backup (its first line is not \"stepcache-backup 1\")");
        }
        r.hasher.update(&magic);
        if r.exact::<1>("the ID high-water mark")? != [TAG_IDS] {
            bail!("the backup is corrupted: no ID high-water mark after the header");
        }
        let id_high_water = r.u64("the ID high-water mark")?;
        let mut records = 0u64;
        let mut batch = sled::Batch::default();
        let mut pending = 0usize;
        let mut last_key: Option<Vec<u8>> = None;
        loop {
            let [tag] = r.exact::<1>("the trailer")?;
            match tag {
                TAG_RECORD => {
                    let what = format!("record {}", records + 1);
                    let klen = r.u32(&what)?;
                    let k = r.bytes(u64::from(klen), &what)?;
                    let vlen = r.u32(&what)?;
                    let v = r.bytes(u64::from(vlen), &what)?;
                    if last_key.as_ref().is_some_and(|last| *last >= k) {
                        bail!("the backup is corrupted: {what} is out of key order");
                    }
                    batch.insert(k.as_slice(), v);
                    last_key = Some(k);
                    records += 1;
                    pending += 1;
                    if pending == BATCH {
                        self.restore_batch(std::mem::take(&mut batch))?;
                        pending = 0;
                    }
                }
                TAG_END => break,
                other => bail!(
                    "the backup is corrupted: unexpected byte 0x{other:02x} after record {records}"
                ),
            }
        }
        let count = r.u64("the record count")?;
        let expected = r.hasher.finalize();
        let mut hash = [0u8; 32];
        r.inner
            .read_exact(&mut hash)
            .map_err(|e| truncated(e, "the checksum"))?;
        if count != records {
            bail!(
                "the backup is corrupted: its trailer counts {count} records, it holds {records}"
            );
        }
        if hash != *expected.as_bytes() {
            bail!("the backup is corrupted: its BLAKE3 checksum does not match its content");
        }
        let mut extra = [0u8; 1];
        if r.inner.read(&mut extra)? != 0 {
            bail!("the backup is corrupted: data follows its trailer");
        }
        self.restore_batch(batch)?;
        // New IDs above every restored one (and above any floor it carried).
        let floor = match self.tree.get(keys::META_ID_FLOOR)? {
            Some(v) => keys::read_u64(&v, 0)?.max(id_high_water),
            None => id_high_water,
        };
        self.tree
            .insert(keys::META_ID_FLOOR, floor.to_be_bytes().as_slice())?;
        self.reload_id_floor()?;
        Ok(Summary {
            records,
            id_high_water,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> Store {
        super::open(dir).unwrap()
    }

    fn backup_of(records: &[(&[u8], &[u8])], high_water: u64) -> (tempfile::TempDir, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        for (k, v) in records {
            store.tree.insert(k, *v).unwrap();
        }
        let mut out = Vec::new();
        let s = store.export(&mut out).unwrap();
        assert_eq!(s.records, records.len() as u64);
        assert!(s.id_high_water >= high_water);
        (dir, out)
    }

    #[test]
    fn round_trip_is_exact() {
        let (_d, backup) = backup_of(&[(b"a1", b"x"), (b"b2", b""), (b"c3", b"zzz")], 0);
        assert!(backup.starts_with(MAGIC));
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let s = store.import(backup.as_slice()).unwrap();
        assert_eq!(s.records, 3);
        assert_eq!(store.tree.get(b"c3").unwrap().unwrap().as_ref(), b"zzz");
        assert_eq!(store.tree.get(b"b2").unwrap().unwrap().as_ref(), b"");
        // A second import into the now non-empty store is refused.
        let err = store.import(backup.as_slice()).unwrap_err().to_string();
        assert!(err.contains("not empty"), "{err}");
    }

    #[test]
    fn every_damage_is_refused_and_leaves_the_store_empty() {
        let (_d, backup) = backup_of(&[(b"a1", b"value-one"), (b"b2", b"value-two")], 0);
        let mut flipped = backup.clone();
        let at = MAGIC.len() + 9 + 12; // inside the first value
        flipped[at] ^= 0x20;
        let mut extended = backup.clone();
        extended.push(0);
        let mut other_version = backup.clone();
        other_version[17] = b'9';
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "truncated",
                backup[..backup.len() - 5].to_vec(),
                "truncated",
            ),
            (
                "cut mid-record",
                backup[..MAGIC.len() + 12].to_vec(),
                "truncated",
            ),
            ("empty", vec![], "truncated"),
            ("flipped", flipped, "checksum"),
            ("extended", extended, "follows its trailer"),
            ("other version", other_version, "unsupported backup version"),
            (
                "not a backup",
                b"hello world, this is text\n".to_vec(),
                "not a stepcache backup",
            ),
        ];
        for (name, bytes, expect) in cases {
            let dir = tempfile::tempdir().unwrap();
            let store = open(dir.path());
            let err = format!("{:#}", store.import(bytes.as_slice()).unwrap_err());
            assert!(err.contains(expect), "{name}: {err}");
            assert!(store.tree.is_empty(), "{name}: the store is left empty");
        }
    }

    #[test]
    fn new_ids_start_above_the_high_water_mark() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let before = store.allocate(1).unwrap().ids[0];
        let mut out = Vec::new();
        let s = store.export(&mut out).unwrap();
        assert!(s.id_high_water >= before as u64);
        let dir2 = tempfile::tempdir().unwrap();
        let restored = open(dir2.path());
        restored.import(out.as_slice()).unwrap();
        let next = restored.allocate(1).unwrap().ids[0];
        assert!(
            next as u64 > s.id_high_water,
            "{next} > {}",
            s.id_high_water
        );
    }
}
