//! What the hits file and its helpers ask of the operating system beyond std.
//!
//! On Linux: reads that never wait for the disk (`preadv2` with
//! `RWF_NOWAIT`), a read-only mapping of the file whose pages are checked
//! against the page cache (`mincore`), no access-time updates (`O_NOATIME`),
//! transparent huge pages for the index (`MADV_HUGEPAGE`), and a low priority
//! for the thread that fills the file.
//!
//! Everywhere else, and on Linux with the `portable` feature (which CI builds
//! and tests), the portable path: no mapping, so every record is read with a
//! plain positioned read on the read pool (never on the async threads, as a
//! read there could wait for the disk), and no hints. The answers are the
//! same; only the cost of a hit from the file differs.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

/// Whether this build takes the Linux path (false: the portable one); the
/// tests expect what each path does.
#[cfg(test)]
pub const LINUX_IO: bool = cfg!(all(target_os = "linux", not(feature = "portable")));

#[cfg(all(target_os = "linux", not(feature = "portable")))]
mod imp {
    use std::fs::{File, OpenOptions};
    use std::io;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;

    pub fn read_nowait(file: &File, len: usize, at: u64) -> Option<Vec<u8>> {
        let mut buf = Vec::<u8>::with_capacity(len);
        let iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: len,
        };
        let offset = libc::off64_t::try_from(at).ok()?;
        // SAFETY: `iov` points at `buf`'s `len` bytes of capacity, which
        // outlive the call and are not otherwise borrowed meanwhile; the fd
        // is open for as long as `file` is.
        let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, offset, libc::RWF_NOWAIT) };
        if usize::try_from(n).ok()? != len {
            return None;
        }
        // SAFETY: the read wrote all `len` bytes of the capacity.
        unsafe { buf.set_len(len) };
        Some(buf)
    }

    pub fn map(file: &File, len: u64) -> Option<memmap2::Mmap> {
        // SAFETY: the mapping is only read, and only where the hits file's
        // segment marks pages this process wrote or read through the file,
        // which lie before the file's end: the file is only ever appended
        // to while mapped (it is sized before it is mapped, a rotation
        // writes a new file); a truncation by another process would fault.
        unsafe {
            memmap2::MmapOptions::new()
                .len(usize::try_from(len).ok()?)
                .map(file)
        }
        .ok()
    }

    pub fn resident(map: &memmap2::Mmap, pages: usize, held: &mut [u8]) -> bool {
        let bytes = pages * super::PAGE;
        if pages > held.len() || bytes > map.len() {
            return false;
        }
        // SAFETY: the range starts at the mapping's (page-aligned) start and
        // lies within it (checked above); `held` has a byte per page of it.
        let rc =
            unsafe { libc::mincore(map.as_ptr() as *mut libc::c_void, bytes, held.as_mut_ptr()) };
        rc == 0
    }

    pub fn open_noatime(options: &OpenOptions, path: &std::path::Path) -> io::Result<File> {
        let mut noatime = options.clone();
        match noatime.custom_flags(libc::O_NOATIME).open(path) {
            // O_NOATIME is for the file's owner only.
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => options.open(path),
            opened => opened,
        }
    }

    pub fn advise_huge_pages(start: usize, len: usize) {
        // SAFETY: the caller passes a range inside an allocation this
        // process owns; MADV_HUGEPAGE changes neither its contents nor its
        // mapping, and its result is only advice (ignored).
        unsafe {
            libc::madvise(start as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
        }
    }

    pub fn lower_thread_priority() {
        // SAFETY: setpriority takes no pointers; on Linux `who` 0 with
        // PRIO_PROCESS names the calling thread.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
    }
}

#[cfg(not(all(target_os = "linux", not(feature = "portable"))))]
mod imp {
    use std::fs::{File, OpenOptions};
    use std::io;

    pub fn read_nowait(_file: &File, _len: usize, _at: u64) -> Option<Vec<u8>> {
        None
    }

    pub fn map(_file: &File, _len: u64) -> Option<memmap2::Mmap> {
        None
    }

    pub fn resident(_map: &memmap2::Mmap, _pages: usize, _held: &mut [u8]) -> bool {
        false
    }

    pub fn open_noatime(options: &OpenOptions, path: &std::path::Path) -> io::Result<File> {
        options.open(path)
    }

    pub fn advise_huge_pages(_start: usize, _len: usize) {}

    pub fn lower_thread_priority() {}
}

/// The page size the mapping's residency is tracked in.
pub const PAGE: usize = 4096;

/// `len` bytes at `at` if the page cache holds all of them, read without
/// waiting for the disk; None when the read would wait, on any error, and
/// always on the portable path.
pub fn read_nowait(file: &File, len: usize, at: u64) -> Option<Vec<u8>> {
    imp::read_nowait(file, len, at)
}

/// `file` mapped read-only over `len` bytes (past its end); None if the
/// kernel refuses, and always on the portable path.
pub fn map(file: &File, len: u64) -> Option<memmap2::Mmap> {
    imp::map(file, len)
}

/// Fills `held` (a byte per page, bit 0 set where the page cache holds the
/// page) for the first `pages` pages of `map`; false if it cannot tell.
pub fn resident(map: &memmap2::Mmap, pages: usize, held: &mut [u8]) -> bool {
    imp::resident(map, pages, held)
}

/// Opens `path` with `options`, without access-time updates where the
/// kernel allows it (a read then skips the inode's access-time update).
pub fn open_noatime(options: &OpenOptions, path: &Path) -> io::Result<File> {
    imp::open_noatime(options, path)
}

/// Asks for transparent huge pages over [start, start + len), a range of an
/// allocation the caller owns. Only advice.
pub fn advise_huge_pages(start: usize, len: usize) {
    imp::advise_huge_pages(start, len)
}

/// Lowers the calling thread's scheduling priority (background work).
pub fn lower_thread_priority() {
    imp::lower_thread_priority()
}

/// Returns to the OS the memory this thread freed but mimalloc kept.
///
/// Opening a large sled store reads its whole snapshot (the page table) into
/// memory and frees most of it again; mimalloc keeps freed pages for reuse by
/// the thread that freed them, and the opening thread then idles, so without
/// this an idle server on a large store keeps memory it no longer uses.
/// Harmless when mimalloc is not the global allocator.
pub fn release_freed_memory() {
    // SAFETY: mi_collect takes no pointers; it only walks this thread's heap.
    unsafe { libmimalloc_sys::mi_collect(true) }
}
