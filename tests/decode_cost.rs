//! Decoding a request costs memory linear in its size, whatever its shape:
//! the allocator of this test binary counts the bytes each decode asks for.
//! (One test: the count is process-wide, so nothing may run beside it.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use prost::Message;
use stepcache::proto::get_cached_execution_request::Target;
use stepcache::proto::{GetCachedExecutionRequest, TaskInterface};
use stepcache::validate::{self, Limits};

struct Counting;

static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call goes to the system allocator unchanged; only a counter
// is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATED.fetch_add(new_size, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Bytes allocated while `f` runs.
fn allocated_by<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = ALLOCATED.load(Ordering::Relaxed);
    let out = f();
    (out, ALLOCATED.load(Ordering::Relaxed) - before)
}

/// `part` repeated until the body is at least `size` bytes.
fn repeated(part: &[u8], size: usize) -> Vec<u8> {
    part.repeat(size.div_ceil(part.len()))
}

#[test]
fn decoding_costs_memory_linear_in_the_request() {
    const SIZE: usize = 256 << 10;
    // Each body is 256 KiB; linear decoding allocates a small multiple of
    // that, the quadratic one (a copy of everything before per part)
    // gigabytes.
    let bound = 16 * SIZE;
    let cases: [(&str, &[u8]); 3] = [
        // interface { component: "x" }, ~87k times: one interface merged.
        ("interface parts", &[0x12, 0x03, 0x0a, 0x01, b'x']),
        // An interface field of one invalid byte, the attack as reported.
        ("one-byte interface parts", &[0x12, 0x01, b'A']),
        // Empty interfaces.
        ("empty interface parts", &[0x12, 0x00]),
    ];
    for (what, part) in cases {
        let body = repeated(part, SIZE);
        let (decoded, cost) = allocated_by(|| {
            let mut r = GetCachedExecutionRequest::decode(&body[..])?;
            r.decode_interface()?;
            Ok::<_, prost::DecodeError>(r)
        });
        assert!(
            cost < bound,
            "{what}: decoding {} bytes allocated {cost}",
            body.len()
        );
        if what == "interface parts" {
            let want = TaskInterface {
                component: "x".into(),
                ..Default::default()
            };
            assert_eq!(decoded.unwrap().target, Some(Target::Interface(want)));
        }
    }

    // The key's wire path over one large interface: many outputs.
    let outputs = TaskInterface {
        component: "c".into(),
        output_artifacts: (0..5_000).map(|i| (format!("o{i}"), "t".into())).collect(),
        ..Default::default()
    }
    .encode_to_vec();
    let limits = Limits::default();
    let (_, cost) = allocated_by(|| validate::interface_bytes(&outputs, &limits));
    assert!(cost < 16 * outputs.len(), "wire path allocated {cost}");
}
