//! The global allocator the binary uses: mimalloc, called through its plain
//! entry points, and told to give freed memory back when a worker goes idle.
//! In the library so that the soak test can run portico under the allocator
//! it ships with (a test binary otherwise gets glibc's malloc).
#![allow(unsafe_code)]

use libmimalloc_sys::{
    mi_collect, mi_free, mi_malloc, mi_malloc_aligned, mi_realloc, mi_realloc_aligned, mi_zalloc,
    mi_zalloc_aligned,
};
use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::ffi::c_void;
use std::time::{Duration, Instant};

/// The least time between two collections on one worker thread.
const COLLECT_EVERY: Duration = Duration::from_secs(1);

/// For the runtime's `on_thread_park`: as a worker goes idle, at most once a
/// second, let mimalloc free the pages this thread emptied and purge (return
/// to the OS) what has been free longer than its purge delay.
///
/// mimalloc does that work only from the allocation and free calls of the
/// thread that owns a page, so a worker that goes idle after a burst kept
/// everything the burst freed resident until it was busy again (the soak
/// test, `tests/soak.rs`, bounds the resident size after its bursts).
/// A normal (not forced) collection leaves full pages and the purge delay to
/// mimalloc, so a busy worker pays one call a second.
pub fn collect_when_idle() {
    thread_local! {
        static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
    }
    LAST.with(|last| {
        let now = Instant::now();
        if last
            .get()
            .is_some_and(|t| now.duration_since(t) < COLLECT_EVERY)
        {
            return;
        }
        last.set(Some(now));
        // SAFETY: a plain C call about the calling thread's own heap.
        unsafe { mi_collect(false) }
    });
}

/// mimalloc through its plain `malloc` entry points where they already
/// give the alignment asked for.
///
/// The `mimalloc` crate sends every allocation to `mi_malloc_aligned`,
/// whose fast path only covers blocks up to 1 KiB: larger ones whose size
/// is not a power of two (hyper's and rustls's buffers) take its
/// over-allocating fallback even when asked for alignment 1, which shows in
/// `benches/callgrind.sh S2`'s profile.
pub struct MiMalloc;

/// Whether `mi_malloc(size)` is already aligned to `align`. Its size
/// classes are multiples of 8, and of 16 above 16, laid out from 16-byte
/// aligned page starts (`MI_MAX_ALIGN_SIZE`, C's `max_align_t`), so any
/// block is 8-aligned and a block of a multiple of 16 bytes 16-aligned.
fn plain(align: usize, size: usize) -> bool {
    align <= 8 || (align == 16 && size.is_multiple_of(16))
}

// SAFETY: every pointer handed out comes from mimalloc with at least the
// layout's size and alignment, and goes back to mimalloc's `mi_free`,
// which takes blocks from both the plain and the aligned entry points.
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: plain C calls; a null return is the GlobalAlloc contract's error.
        unsafe {
            if plain(layout.align(), layout.size()) {
                mi_malloc(layout.size()).cast()
            } else {
                mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        unsafe {
            if plain(layout.align(), layout.size()) {
                mi_zalloc(layout.size()).cast()
            } else {
                mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator (the caller's contract).
        unsafe { mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator; mimalloc keeps the
        // alignment asked for here across the move.
        unsafe {
            if plain(layout.align(), new_size) {
                mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every block, plain or aligned, fresh or moved, has its layout's
    /// alignment: the plain path is only taken where mimalloc's size
    /// classes give it.
    #[test]
    fn every_allocation_has_the_alignment_asked_for() {
        let a = MiMalloc;
        for align in [1usize, 2, 4, 8, 16, 32, 64, 128, 4096] {
            let mut live = Vec::new();
            for size in (1..=2100).step_by(7).chain([align, 3 * align, 65_536 + 24]) {
                let Ok(layout) = Layout::from_size_align(size, align) else {
                    continue;
                };
                for zeroed in [false, true] {
                    // SAFETY: non-zero size; freed below with the same allocator.
                    let p = unsafe {
                        if zeroed {
                            a.alloc_zeroed(layout)
                        } else {
                            a.alloc(layout)
                        }
                    };
                    assert!(!p.is_null(), "{size} bytes aligned {align}");
                    assert_eq!(p as usize % align, 0, "{size} bytes aligned {align}");
                    if zeroed {
                        // SAFETY: `p` holds `size` initialised (zeroed) bytes.
                        let bytes = unsafe { std::slice::from_raw_parts(p, size) };
                        assert!(bytes.iter().all(|&b| b == 0), "{size} bytes zeroed");
                    }
                    // SAFETY: `p` is live with `layout`; the new size is non-zero.
                    let q = unsafe { a.realloc(p, layout, size * 2 + 5) };
                    assert!(!q.is_null());
                    assert_eq!(
                        q as usize % align,
                        0,
                        "{size} -> {} aligned {align}",
                        size * 2 + 5
                    );
                    live.push((q, Layout::from_size_align(size * 2 + 5, align).ok()));
                }
            }
            for (q, layout) in live {
                if let Some(layout) = layout {
                    // SAFETY: `q` came from `realloc` above with this layout.
                    unsafe { a.dealloc(q, layout) };
                }
            }
        }
    }
}
