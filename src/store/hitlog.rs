//! The hits file: the hot cache's second tier (`hot`). It holds the newest
//! servable hit of every key the hot cache was given, as the reply's encoded
//! fields, appended to `hits.log` in the data dir; an in-memory index maps a
//! key's tag to the record's offset. A hit from it reads one small record,
//! where a hit from sled reads the whole leaf the entry is in.
//!
//! A fill of the file (`Store::warm_in_background`) writes it in aligned
//! chunks of 2 MiB (`hot::FILL_CHUNK`), so that the page cache holds it in
//! huge folios; it is opened `O_NOATIME`.
//!
//! A record's fields are compressed (LZ4) against a dictionary: the fields
//! of the file's first records, up to 16 KiB (`Dict`), which the index file
//! keeps with the index. A record then takes well under half of its fields'
//! size, so that the file of a large store stays small enough to map, and
//! the file is read through a mapping, without a system call: what was read or
//! written through the file (and is therefore in the page cache) is marked
//! and read through the mapping from then on; the rest is read with
//! `preadv2` first, so that a read on the async threads never waits for the
//! disk unknowingly.
//!
//! The file is derived from the store, never the answer of record: whatever
//! goes wrong with it (a torn record, a lost index, a collision of tags) costs
//! a read from sled, not a wrong answer. Every record names its namespace and
//! key, checked at every read, and carries a CRC. The index survives a restart
//! only after a clean close: `persist` writes it to `hits.idx` with an epoch
//! that the store also records in sled; `open` loads it only when the two
//! epochs match, and removes both before the store takes a write, so that an
//! index is never used against a store that changed after it was written (a
//! crash, another copy of the files).

use std::fs::{self, File, OpenOptions};
use std::hash::Hasher;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use prost::bytes::Bytes;

use super::os;
use crate::key::CacheKey;

pub const LOG_FILE: &str = "hits.log";
pub const INDEX_FILE: &str = "hits.idx";
const INDEX_MAGIC: &[u8; 8] = b"SCHITS02";
/// len u32, crc u32, completed_ms i64, ttl_ms i64, namespace length u16,
/// key, the fields' length u32 when compressed (0: stored as they are).
const HEADER: usize = 4 + 4 + 8 + 8 + 2 + 32 + 4;
/// The dictionary: the first fields given to a file, up to this many bytes
/// (a larger one compresses little better and costs each compression more).
const DICT_BYTES: usize = 16 << 10;
/// Files up to this limit are mapped (the mapping covers the limit, so that
/// it need not grow with the file); larger limits read with `preadv2` only.
const MAX_MAPPED: u64 = 64 << 30;
const PAGE: u64 = os::PAGE as u64;
/// An index value is `offset << LEN_BITS | len`.
const LEN_BITS: u32 = 24;
const NO_TTL: i64 = i64::MIN;

/// Where a key's record is: offset and length packed in one u64, by tag.
pub use super::tag_index::TagIndex as Index;

/// Tags are already uniform hashes (BLAKE3): the memory tier's LRU (`hot`)
/// uses them as they are, as the index (`tag_index`) does.
#[derive(Default)]
pub struct TagHasher(u64);

impl Hasher for TagHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// One file of records, appended at `end`. A rotation starts a new file under
/// the same name; readers holding the old one keep reading it.
pub struct Segment {
    file: File,
    end: AtomicU64,
    /// The file mapped, up to the limit; None where mapping failed.
    map: Option<memmap2::Mmap>,
    /// One bit per page of the file: written or read since it was opened,
    /// so in the page cache, and safe to read through `map` (never past
    /// the file's end, never a wait for the disk on the async threads, as
    /// long as the kernel keeps the page: a page it dropped since costs
    /// that read a page-in).
    resident: Box<[AtomicU64]>,
    dict: Arc<Dict>,
}

/// What a file's records are compressed against: the fields of its first
/// records, up to `DICT_BYTES`, gathered as they are encoded (those records
/// are stored as they are). Set once per file, kept by `persist`.
#[derive(Default)]
pub struct Dict {
    bytes: OnceLock<Box<[u8]>>,
    samples: Mutex<Vec<u8>>,
}

impl Dict {
    fn with(bytes: Option<Box<[u8]>>) -> Self {
        let d = Dict::default();
        if let Some(b) = bytes {
            let _ = d.bytes.set(b);
        }
        d
    }

    pub fn get(&self) -> Option<&[u8]> {
        self.bytes.get().map(|b| &b[..])
    }

    /// Takes `fields` as a sample while there is no dictionary yet.
    fn learn(&self, fields: &[u8]) {
        let Ok(mut samples) = self.samples.lock() else {
            return;
        };
        if self.bytes.get().is_some() {
            return;
        }
        let take = (DICT_BYTES - samples.len()).min(fields.len());
        samples.extend_from_slice(&fields[..take]);
        if samples.len() >= DICT_BYTES {
            let _ = self
                .bytes
                .set(std::mem::take(&mut *samples).into_boxed_slice());
        }
    }
}

/// A record read back.
pub struct Stored {
    pub completed_ms: i64,
    pub ttl_ms: Option<i64>,
    pub fields: Bytes,
}

/// The index key of (namespace, key): a record found under it is checked
/// against both, so a collision costs a miss, never another key's hit.
pub fn tag(ns: &str, key: &CacheKey) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(&(ns.len() as u64).to_le_bytes());
    h.update(ns.as_bytes());
    h.update(&key.0);
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.finalize().as_bytes()[..8]);
    u64::from_le_bytes(b)
}

/// A record, its fields compressed against `dict` where that makes them
/// smaller; None when it is too large to index.
pub fn encode(
    dict: Option<&[u8]>,
    ns: &str,
    key: &CacheKey,
    completed_ms: i64,
    ttl_ms: Option<i64>,
    fields: &[u8],
) -> Option<Vec<u8>> {
    let ns_len = u16::try_from(ns.len()).ok()?;
    // Fields too large to index whole are not compressed either, so that a
    // read never allocates more than a record's limit.
    let compressed = dict
        .filter(|_| fields.len() < 1 << LEN_BITS)
        .map(|d| lz4_flex::block::compress_with_dict(fields, d))
        .filter(|c| c.len() < fields.len());
    let (raw_len, payload) = match &compressed {
        Some(c) => (u32::try_from(fields.len()).ok()?, &c[..]),
        None => (0, fields),
    };
    let len = HEADER + ns.len() + payload.len();
    if len >= 1 << LEN_BITS {
        return None;
    }
    let mut r = Vec::with_capacity(len);
    r.extend_from_slice(&(len as u32).to_le_bytes());
    r.extend_from_slice(&[0; 4]);
    r.extend_from_slice(&completed_ms.to_le_bytes());
    r.extend_from_slice(&ttl_ms.unwrap_or(NO_TTL).to_le_bytes());
    r.extend_from_slice(&ns_len.to_le_bytes());
    r.extend_from_slice(&key.0);
    r.extend_from_slice(&raw_len.to_le_bytes());
    r.extend_from_slice(ns.as_bytes());
    r.extend_from_slice(payload);
    let crc = crc32fast::hash(&r[8..]);
    r[4..8].copy_from_slice(&crc.to_le_bytes());
    Some(r)
}

/// The record in `buf` if it is whole and is (ns, key)'s, its fields
/// decompressed against `dict`.
pub fn decode(buf: &[u8], ns: &str, key: &CacheKey, dict: Option<&[u8]>) -> Option<Stored> {
    if le::<4>(buf, 0)? as usize != buf.len()
        || le::<4>(buf, 4)? != u64::from(crc32fast::hash(buf.get(8..)?))
    {
        return None;
    }
    let completed_ms = le::<8>(buf, 8)? as i64;
    let ttl_ms = Some(le::<8>(buf, 16)? as i64).filter(|t| *t != NO_TTL);
    let ns_len = le::<2>(buf, 24)? as usize;
    let raw_len = le::<4>(buf, 58)? as usize;
    let ns_at = HEADER;
    if buf.get(26..58)? != key.0 || buf.get(ns_at..ns_at + ns_len)? != ns.as_bytes() {
        return None;
    }
    let payload = buf.get(ns_at + ns_len..)?;
    let fields = if raw_len == 0 {
        Bytes::copy_from_slice(payload)
    } else if raw_len >= 1 << LEN_BITS {
        return None;
    } else {
        let out = lz4_flex::block::decompress_with_dict(payload, raw_len, dict?).ok()?;
        (out.len() == raw_len).then(|| Bytes::from(out))?
    };
    Some(Stored {
        completed_ms,
        ttl_ms,
        fields,
    })
}

pub fn pack(offset: u64, len: usize) -> Option<u64> {
    (offset < 1 << (64 - LEN_BITS) && len < 1 << LEN_BITS)
        .then_some(offset << LEN_BITS | len as u64)
}

pub fn unpack(packed: u64) -> (u64, usize) {
    (
        packed >> LEN_BITS,
        (packed & ((1 << LEN_BITS) - 1)) as usize,
    )
}

impl Segment {
    fn new(file: File, end: u64, cap: u64, dict: Arc<Dict>) -> Segment {
        let map = (cap <= MAX_MAPPED).then(|| os::map(&file, cap)).flatten();
        let pages = if map.is_some() { cap.div_ceil(PAGE) } else { 0 };
        Segment {
            file,
            end: AtomicU64::new(end),
            map,
            resident: (0..pages.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            dict,
        }
    }

    /// The pages of `len` bytes at `at`, as (word, bit) of `resident`.
    fn pages(at: u64, len: usize) -> impl Iterator<Item = (usize, u64)> {
        let last = (at + len.max(1) as u64 - 1) / PAGE;
        (at / PAGE..=last).map(|p| ((p / 64) as usize, 1 << (p % 64)))
    }

    fn mark(&self, at: u64, len: usize) {
        for (word, bit) in Self::pages(at, len) {
            if let Some(w) = self.resident.get(word) {
                w.fetch_or(bit, Ordering::Relaxed);
            }
        }
    }

    fn is_resident(&self, at: u64, len: usize) -> bool {
        Self::pages(at, len).all(|(word, bit)| {
            self.resident
                .get(word)
                .is_some_and(|w| w.load(Ordering::Relaxed) & bit != 0)
        })
    }

    /// Starts loading the record at `packed` into the CPU's caches through
    /// the mapping, so that a read soon after finds it there. A prefetch
    /// never faults: a page not mapped yet is skipped.
    pub fn prefetch(&self, packed: u64) {
        let (at, len) = unpack(packed);
        let Some(map) = &self.map else {
            return;
        };
        let Some(start) = usize::try_from(at).ok().filter(|a| *a < map.len()) else {
            return;
        };
        let stop = map.len().min(start + len.min(512));
        #[cfg(target_arch = "x86_64")]
        for line in (start..stop).step_by(64) {
            // SAFETY: a prefetch is only a hint; it reads nothing the
            // program sees, and the address lies in the mapping.
            unsafe {
                use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
                _mm_prefetch::<_MM_HINT_T0>(map.as_ptr().wrapping_add(line).cast());
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (start, stop);
    }

    /// Marks again, from the page cache, which pages of the file it holds
    /// (`mincore`): a page the kernel dropped since it was marked is then
    /// read with `preadv2` again, which never waits on the async threads,
    /// instead of through the mapping, which would.
    pub fn refresh_resident(&self) {
        let Some(map) = &self.map else {
            return;
        };
        let end = self.end.load(Ordering::Relaxed).min(map.len() as u64);
        let pages = end.div_ceil(PAGE) as usize;
        if pages == 0 {
            return;
        }
        let mut held = vec![0u8; pages];
        if !os::resident(map, pages, &mut held) {
            return;
        }
        for (word, chunk) in self.resident.iter().zip(held.chunks(64)) {
            let bits = chunk
                .iter()
                .enumerate()
                .fold(0u64, |bits, (i, b)| bits | u64::from(b & 1) << i);
            word.store(bits, Ordering::Relaxed);
        }
    }

    /// Reserves `len` bytes at the end; None once the file would pass `cap`.
    pub fn reserve(&self, len: usize, cap: u64) -> Option<u64> {
        let at = self.end.fetch_add(len as u64, Ordering::Relaxed);
        (at + len as u64 <= cap).then_some(at)
    }

    pub fn write(&self, at: u64, record: &[u8]) -> io::Result<()> {
        self.file.write_all_at(record, at)?;
        self.mark(at, record.len());
        Ok(())
    }

    /// The record an index value points at, if it is (ns, key)'s. With
    /// `nowait`, only if it can be read without waiting for the disk (the
    /// page cache holds it): such a read may run on the async threads.
    pub fn read(&self, packed: u64, ns: &str, key: &CacheKey, nowait: bool) -> Option<Stored> {
        let (at, len) = unpack(packed);
        let dict = self.dict.get();
        if let Some(map) = self.map.as_ref().filter(|_| self.is_resident(at, len)) {
            let start = usize::try_from(at).ok()?;
            return decode(map.get(start..start.checked_add(len)?)?, ns, key, dict);
        }
        let buf = if nowait {
            os::read_nowait(&self.file, len, at)?
        } else {
            let mut buf = vec![0; len];
            self.file.read_exact_at(&mut buf, at).ok()?;
            buf
        };
        self.mark(at, len);
        decode(&buf, ns, key, dict)
    }
}

/// The hits file of one data dir.
pub struct HitLog {
    dir: PathBuf,
    /// The file's size limit: past it, the tier starts over in a new file.
    pub cap: u64,
    /// The dictionary of the current file; a file that starts over after a
    /// rotation keeps it, and a file emptied at `open` starts a new one.
    dict: Arc<Dict>,
}

impl HitLog {
    /// Opens the file, with the index `persist` left if `epoch` (the one the
    /// store recorded at its clean close) matches it; else empty. Either way
    /// the index file is gone when this returns.
    pub fn open(dir: &Path, cap: u64, epoch: Option<u64>) -> io::Result<Opened> {
        let idx_path = dir.join(INDEX_FILE);
        let saved = match fs::read(&idx_path) {
            Ok(bytes) => {
                fs::remove_file(&idx_path)?;
                sync_dir(dir)?;
                parse_index(&bytes).filter(|saved| Some(saved.epoch) == epoch)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let file = open_log(&dir.join(LOG_FILE), false)?;
        let on_disk = file.metadata()?.len();
        let mut saved = saved.filter(|s| s.end <= on_disk).unwrap_or_default();
        file.set_len(saved.end)?;
        let log = HitLog {
            dir: dir.to_path_buf(),
            cap,
            dict: Arc::new(Dict::with(saved.dict.take())),
        };
        let segment = Arc::new(Segment::new(file, saved.end, cap, log.dict.clone()));
        Ok(Opened {
            log,
            segment,
            index: saved.index,
            filled: saved.filled,
        })
    }

    /// A new, empty file in place of the current one.
    pub fn rotate(&self) -> io::Result<Arc<Segment>> {
        let fresh = self.dir.join(format!("{LOG_FILE}.new"));
        let file = open_log(&fresh, true)?;
        fs::rename(&fresh, self.dir.join(LOG_FILE))?;
        Ok(Arc::new(Segment::new(file, 0, self.cap, self.dict.clone())))
    }

    /// A record for the current file (`encode` against its dictionary,
    /// which the first records' fields make).
    pub fn encode(
        &self,
        ns: &str,
        key: &CacheKey,
        completed_ms: i64,
        ttl_ms: Option<i64>,
        fields: &[u8],
    ) -> Option<Vec<u8>> {
        let dict = self.dict.get();
        if dict.is_none() {
            self.dict.learn(fields);
        }
        encode(dict, ns, key, completed_ms, ttl_ms, fields)
    }

    /// Makes the file durable and writes its index, for an `open` with the
    /// same `epoch`. `filled`: every key of the store was given to it
    /// since it last started over (`Store::warm_hits`).
    pub fn persist(
        &self,
        segment: &Segment,
        index: &Index,
        filled: bool,
        epoch: u64,
    ) -> io::Result<()> {
        segment.file.sync_data()?;
        let end = segment.end.load(Ordering::Relaxed);
        let dict = segment.dict.get().unwrap_or_default();
        let mut out = Vec::with_capacity(52 + dict.len() + index.len() * 16);
        out.extend_from_slice(INDEX_MAGIC);
        out.extend_from_slice(&epoch.to_le_bytes());
        out.extend_from_slice(&end.to_le_bytes());
        out.extend_from_slice(&u64::from(filled).to_le_bytes());
        out.extend_from_slice(&(index.len() as u64).to_le_bytes());
        out.extend_from_slice(&(dict.len() as u64).to_le_bytes());
        out.extend_from_slice(dict);
        for (tag, packed) in index.iter() {
            out.extend_from_slice(&tag.to_le_bytes());
            out.extend_from_slice(&packed.to_le_bytes());
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        let tmp = self.dir.join(format!("{INDEX_FILE}.tmp"));
        let mut f = File::create(&tmp)?;
        f.write_all(&out)?;
        f.sync_all()?;
        fs::rename(&tmp, self.dir.join(INDEX_FILE))?;
        sync_dir(&self.dir)
    }
}

/// What `HitLog::open` found.
pub struct Opened {
    pub log: HitLog,
    pub segment: Arc<Segment>,
    pub index: Index,
    pub filled: bool,
}

#[derive(Default)]
struct Saved {
    epoch: u64,
    end: u64,
    filled: bool,
    index: Index,
    dict: Option<Box<[u8]>>,
}

/// An index file's contents, if it is whole.
fn parse_index(b: &[u8]) -> Option<Saved> {
    let (body, crc) = b.split_at_checked(b.len().checked_sub(4)?)?;
    if crc32fast::hash(body).to_le_bytes() != crc || !body.starts_with(INDEX_MAGIC) {
        return None;
    }
    let (epoch, end, filled, count, dict_len) = (
        le::<8>(body, 8)?,
        le::<8>(body, 16)?,
        le::<8>(body, 24)?,
        le::<8>(body, 32)?,
        usize::try_from(le::<8>(body, 40)?).ok()?,
    );
    let dict = body.get(48..48usize.checked_add(dict_len)?)?;
    let entries = body.get(48 + dict_len..)?;
    if entries.len() as u64 != count.checked_mul(16)? {
        return None;
    }
    let mut index = Index::with_capacity(count as usize);
    for c in entries.chunks_exact(16) {
        index.insert(le::<8>(c, 0)?, le::<8>(c, 8)?);
    }
    Some(Saved {
        epoch,
        end,
        filled: filled == 1,
        index,
        dict: (dict_len > 0).then(|| dict.into()),
    })
}

/// The little-endian unsigned integer of `N` bytes (at most 8) at `at`.
fn le<const N: usize>(b: &[u8], at: usize) -> Option<u64> {
    let bytes: [u8; N] = b.get(at..at.checked_add(N)?)?.try_into().ok()?;
    let mut wide = [0u8; 8];
    wide.get_mut(..N)?.copy_from_slice(&bytes);
    Some(u64::from_le_bytes(wide))
}

/// The hits file, for reading and appending, without access-time updates
/// where the kernel allows it.
fn open_log(path: &Path, truncate: bool) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options
        .read(true)
        .write(true)
        .create(true)
        .truncate(truncate);
    os::open_noatime(&options, path)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests;
