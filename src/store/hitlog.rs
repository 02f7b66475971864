//! The hits file: the hot cache's second tier (`hot`). It holds the newest
//! servable hit of every key the hot cache was given, as the reply's encoded
//! fields, appended to `hits.log` in the data dir; an in-memory index maps a
//! key's tag to the record's offset. A hit from it is one `pread` of its
//! ~0.7 KB record, where a hit from sled reads the whole leaf the entry is in
//! (~9 KB) (BENCHMARKS.md, "Hits from the hits file").
//!
//! A fill of the file (`Store::warm_in_background`) writes it in aligned
//! chunks of 2 MiB (`hot::FILL_CHUNK`), so that the page cache holds it in
//! huge folios; it is opened `O_NOATIME`.
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
use std::sync::Arc;

use prost::bytes::Bytes;

use crate::key::CacheKey;

pub const LOG_FILE: &str = "hits.log";
pub const INDEX_FILE: &str = "hits.idx";
const INDEX_MAGIC: &[u8; 8] = b"SCHITS01";
/// len u32, crc u32, completed_ms i64, ttl_ms i64, namespace length u16, key.
const HEADER: usize = 4 + 4 + 8 + 8 + 2 + 32;
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

/// A record, or None when it is too large to index.
pub fn encode(
    ns: &str,
    key: &CacheKey,
    completed_ms: i64,
    ttl_ms: Option<i64>,
    fields: &[u8],
) -> Option<Vec<u8>> {
    let ns_len = u16::try_from(ns.len()).ok()?;
    let len = HEADER + ns.len() + fields.len();
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
    r.extend_from_slice(ns.as_bytes());
    r.extend_from_slice(fields);
    let crc = crc32fast::hash(&r[8..]);
    r[4..8].copy_from_slice(&crc.to_le_bytes());
    Some(r)
}

/// The record in `buf` if it is whole and is (ns, key)'s.
pub fn decode(buf: Bytes, ns: &str, key: &CacheKey) -> Option<Stored> {
    if le::<4>(&buf, 0)? as usize != buf.len()
        || le::<4>(&buf, 4)? != u64::from(crc32fast::hash(buf.get(8..)?))
    {
        return None;
    }
    let completed_ms = le::<8>(&buf, 8)? as i64;
    let ttl_ms = Some(le::<8>(&buf, 16)? as i64).filter(|t| *t != NO_TTL);
    let ns_len = le::<2>(&buf, 24)? as usize;
    let ns_at = HEADER;
    if buf.get(26..HEADER)? != key.0 || buf.get(ns_at..ns_at + ns_len)? != ns.as_bytes() {
        return None;
    }
    // Advanced past the header, not sliced: a slice of a buffer made from
    // a Vec allocates a shared count for the two, and only one is left.
    let mut fields = buf;
    prost::bytes::Buf::advance(&mut fields, ns_at + ns_len);
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
    /// Reserves `len` bytes at the end; None once the file would pass `cap`.
    pub fn reserve(&self, len: usize, cap: u64) -> Option<u64> {
        let at = self.end.fetch_add(len as u64, Ordering::Relaxed);
        (at + len as u64 <= cap).then_some(at)
    }

    pub fn write(&self, at: u64, record: &[u8]) -> io::Result<()> {
        self.file.write_all_at(record, at)
    }

    /// The record an index value points at, if it is (ns, key)'s. With
    /// `nowait`, only if it can be read without waiting for the disk (the
    /// page cache holds it): such a read may run on the async threads.
    pub fn read(&self, packed: u64, ns: &str, key: &CacheKey, nowait: bool) -> Option<Stored> {
        let (at, len) = unpack(packed);
        let buf = if nowait {
            read_nowait(&self.file, len, at)?
        } else {
            let mut buf = vec![0; len];
            self.file.read_exact_at(&mut buf, at).ok()?;
            buf
        };
        decode(Bytes::from(buf), ns, key)
    }
}

/// The hits file of one data dir.
pub struct HitLog {
    dir: PathBuf,
    /// The file's size limit: past it, the tier starts over in a new file.
    pub cap: u64,
}

impl HitLog {
    /// Opens the file, with the index `persist` left if `epoch` (the one the
    /// store recorded at its clean close) matches it; else empty. Either way
    /// the index file is gone when this returns.
    pub fn open(dir: &Path, cap: u64, epoch: Option<u64>) -> io::Result<Opened> {
        let log = HitLog {
            dir: dir.to_path_buf(),
            cap,
        };
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
        let saved = saved.filter(|s| s.end <= on_disk).unwrap_or_default();
        file.set_len(saved.end)?;
        let segment = Arc::new(Segment {
            file,
            end: AtomicU64::new(saved.end),
        });
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
        Ok(Arc::new(Segment {
            file,
            end: AtomicU64::new(0),
        }))
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
        let mut out = Vec::with_capacity(44 + index.len() * 16);
        out.extend_from_slice(INDEX_MAGIC);
        out.extend_from_slice(&epoch.to_le_bytes());
        out.extend_from_slice(&end.to_le_bytes());
        out.extend_from_slice(&u64::from(filled).to_le_bytes());
        out.extend_from_slice(&(index.len() as u64).to_le_bytes());
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
}

/// An index file's contents, if it is whole.
fn parse_index(b: &[u8]) -> Option<Saved> {
    let (body, crc) = b.split_at_checked(b.len().checked_sub(4)?)?;
    if crc32fast::hash(body).to_le_bytes() != crc || !body.starts_with(INDEX_MAGIC) {
        return None;
    }
    let (epoch, end, filled, count) = (
        le::<8>(body, 8)?,
        le::<8>(body, 16)?,
        le::<8>(body, 24)?,
        le::<8>(body, 32)?,
    );
    let entries = body.get(40..)?;
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
    })
}

/// The little-endian unsigned integer of `N` bytes (at most 8) at `at`.
fn le<const N: usize>(b: &[u8], at: usize) -> Option<u64> {
    let bytes: [u8; N] = b.get(at..at.checked_add(N)?)?.try_into().ok()?;
    let mut wide = [0u8; 8];
    wide.get_mut(..N)?.copy_from_slice(&bytes);
    Some(u64::from_le_bytes(wide))
}

/// Fills `buf` from `at` if the page cache holds all of it (`preadv2` with
/// `RWF_NOWAIT`); None when it would wait for the disk, or on any error.
/// `len` bytes at `at`, read into a buffer that is not zeroed first (the
/// read fills it, or it is dropped).
pub(super) fn read_nowait(file: &File, len: usize, at: u64) -> Option<Vec<u8>> {
    use std::os::fd::AsRawFd;
    let mut buf = Vec::<u8>::with_capacity(len);
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: len,
    };
    let offset = libc::off64_t::try_from(at).ok()?;
    // SAFETY: `iov` points at `buf`'s `len` bytes of capacity, which outlive
    // the call and are not otherwise borrowed meanwhile; the fd is open for
    // as long as `file` is.
    let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, offset, libc::RWF_NOWAIT) };
    if usize::try_from(n).ok()? != len {
        return None;
    }
    // SAFETY: the read wrote all `len` bytes.
    unsafe { buf.set_len(len) };
    Some(buf)
}

/// The hits file, for reading and appending, without access-time updates
/// where the kernel allows it (`O_NOATIME`: the file's owner only): a read
/// then skips the inode's access-time check, ~0.08 us of a ~0.85 us read
/// (`bench/read-cost.c`).
fn open_log(path: &Path, truncate: bool) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let open = |flags| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(truncate)
            .custom_flags(flags)
            .open(path)
    };
    match open(libc::O_NOATIME) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => open(0),
        opened => opened,
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_only_as_its_own_key() {
        let (k, other) = (CacheKey([7; 32]), CacheKey([8; 32]));
        let r = encode("ns", &k, 1_000, Some(50), b"fields").unwrap();
        let s = decode(Bytes::from(r.clone()), "ns", &k).unwrap();
        assert_eq!(
            (s.completed_ms, s.ttl_ms, &s.fields[..]),
            (1_000, Some(50), &b"fields"[..])
        );
        assert!(decode(Bytes::from(r.clone()), "ns", &other).is_none());
        assert!(decode(Bytes::from(r.clone()), "nt", &k).is_none());
        let mut torn = r.clone();
        let last = torn.len() - 1;
        torn[last] ^= 1;
        assert!(decode(Bytes::from(torn), "ns", &k).is_none(), "crc");
        assert!(decode(Bytes::from(r[..r.len() - 1].to_vec()), "ns", &k).is_none());
        let none = encode("ns", &k, 1, None, b"").unwrap();
        assert_eq!(decode(Bytes::from(none), "ns", &k).unwrap().ttl_ms, None);
    }

    #[test]
    fn the_index_comes_back_only_with_its_epoch_and_only_once() {
        let dir = tempfile::tempdir().unwrap();
        let k = CacheKey([1; 32]);
        let Opened {
            log,
            segment: seg,
            mut index,
            filled,
        } = HitLog::open(dir.path(), 1 << 20, None).unwrap();
        assert!(index.is_empty() && !filled);
        let r = encode("ns", &k, 5, None, b"abc").unwrap();
        let at = seg.reserve(r.len(), log.cap).unwrap();
        seg.write(at, &r).unwrap();
        index.insert(tag("ns", &k), pack(at, r.len()).unwrap());
        log.persist(&seg, &index, true, 42).unwrap();
        drop(seg);

        let opened = HitLog::open(dir.path(), 1 << 20, Some(42)).unwrap();
        let (seg, loaded) = (opened.segment, opened.index);
        let sorted = |i: &Index| {
            let mut all: Vec<_> = i.iter().collect();
            all.sort_unstable();
            all
        };
        assert_eq!(sorted(&loaded), sorted(&index));
        assert!(opened.filled);
        let packed = *loaded.get(&tag("ns", &k)).unwrap();
        assert_eq!(
            &seg.read(packed, "ns", &k, false).unwrap().fields[..],
            b"abc"
        );
        // Just written and read: in the page cache.
        assert_eq!(
            &seg.read(packed, "ns", &k, true).unwrap().fields[..],
            b"abc"
        );
        drop(seg);
        // Opened once: the index file is gone, as after a crash.
        let opened = HitLog::open(dir.path(), 1 << 20, Some(42)).unwrap();
        let (seg, again) = (opened.segment, opened.index);
        assert!(again.is_empty() && !opened.filled);
        assert_eq!(seg.end.load(Ordering::Relaxed), 0, "the file starts over");

        log.persist(&seg, &index, false, 7).unwrap();
        let other = HitLog::open(dir.path(), 1 << 20, Some(8)).unwrap().index;
        assert!(other.is_empty(), "another epoch");
    }

    #[test]
    fn a_damaged_index_file_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let Opened {
            log,
            segment: seg,
            mut index,
            ..
        } = HitLog::open(dir.path(), 1 << 20, None).unwrap();
        index.insert(1, pack(0, 10).unwrap());
        log.persist(&seg, &index, false, 3).unwrap();
        let path = dir.path().join(INDEX_FILE);
        let mut bytes = fs::read(&path).unwrap();
        bytes[40] ^= 0xff;
        fs::write(&path, bytes).unwrap();
        let loaded = HitLog::open(dir.path(), 1 << 20, Some(3)).unwrap().index;
        assert!(loaded.is_empty());
        assert!(!path.exists());
    }

    #[test]
    fn the_file_is_read_without_access_time_updates() {
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        let opened = HitLog::open(dir.path(), 1 << 20, None).unwrap();
        let rotated = opened.log.rotate().unwrap();
        for seg in [&opened.segment, &rotated] {
            // SAFETY: F_GETFL on an fd that `seg` keeps open.
            let flags = unsafe { libc::fcntl(seg.file.as_raw_fd(), libc::F_GETFL) };
            assert_ne!(flags & libc::O_NOATIME, 0, "flags {flags:#o}");
        }
    }

    #[test]
    fn reservations_stop_at_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let seg = HitLog::open(dir.path(), 100, None).unwrap().segment;
        assert_eq!(seg.reserve(60, 100), Some(0));
        assert_eq!(seg.reserve(60, 100), None);
        assert!(pack(1 << 41, 5).is_none());
        assert_eq!(unpack(pack(12_345, 678).unwrap()), (12_345, 678));
    }
}
