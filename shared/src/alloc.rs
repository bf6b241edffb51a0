//! The global allocator of the Lambda binary and of local mode: mimalloc, asked for
//! alignment only when a layout needs more than every block has.
//!
//! The `mimalloc` crate's allocator hands every layout to `mi_malloc_aligned`, whose checks
//! cost about 85 instructions an allocation, and which takes its slow path for every block
//! above 1 KB (a webhook's boxed futures and buffers); `mi_malloc` takes about 20 on its fast
//! path. A webhook makes about 40 allocations (BENCHMARKS.md "Webhook side by side"). Every
//! mimalloc block is aligned to a machine word at least (its size classes are whole words
//! from a page start aligned to 16), so a layout aligned to 8 or less is a plain
//! `mi_malloc`; anything more goes to the aligned calls, as before.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// The alignment every mimalloc block has: a machine word.
const WORD: usize = std::mem::size_of::<usize>();

/// mimalloc (built without transparent huge pages: `no_thp`, see README "The allocator").
pub struct Mimalloc;

// SAFETY: each call hands mimalloc a request it serves with memory of at least the
// layout's size and alignment (plain calls only where a word's alignment is enough), and
// frees and reallocates only what it allocated, as `GlobalAlloc` requires.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= WORD {
            mi::mi_malloc(layout.size()).cast()
        } else {
            mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= WORD {
            mi::mi_zalloc(layout.size()).cast()
        } else {
            mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        mi::mi_free(ptr.cast::<c_void>());
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= WORD {
            mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
        } else {
            mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_block_has_its_layout_s_alignment_and_keeps_its_bytes_when_it_grows() {
        let a = Mimalloc;
        for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
            for size in [1, 7, 8, 9, 24, 100, 1000, 1025, 5000, 70_000] {
                let Ok(layout) = Layout::from_size_align(size, align) else {
                    continue;
                };
                // SAFETY: a non-zero size; each block is written within its size and freed
                // once, with the layout it was made with.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "{size} bytes aligned {align}");
                    p.write_bytes(0xab, size);
                    let grown = a.realloc(p, layout, size * 3);
                    assert!(!grown.is_null());
                    assert_eq!(grown as usize % align, 0, "grown {size} aligned {align}");
                    assert!((0..size).all(|i| *grown.add(i) == 0xab));
                    a.dealloc(grown, Layout::from_size_align_unchecked(size * 3, align));
                    let z = a.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0);
                    assert!((0..size).all(|i| *z.add(i) == 0));
                    a.dealloc(z, layout);
                }
            }
        }
    }
}
