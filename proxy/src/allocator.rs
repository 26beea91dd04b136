//! The global allocator of the proxy (and of the Pingora baseline it is measured against):
//! mimalloc, asked for an alignment only when a type needs more than the 16 bytes every
//! mimalloc block of 16 bytes or more already has, as Rust's `System` allocator does with
//! `malloc`. `mimalloc::MiMalloc` passes every allocation through `mi_malloc_aligned`, which
//! for a block over 1 KiB whose size class is not a power of two (most buffers) takes the
//! over-allocating path even for an alignment of 8: 5 400 instructions a proxied request
//! (decision record 0024).

#![allow(unsafe_code)]

use libmimalloc_sys as ffi;
use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

/// mimalloc's `MI_MAX_ALIGN_SIZE`: what `mi_malloc` aligns a block of at least this size to.
const MALLOC_ALIGN: usize = 16;

/// Whether `mi_malloc` alone gives `layout` its alignment.
fn malloc_aligns(layout: &Layout) -> bool {
    layout.align() <= MALLOC_ALIGN && layout.align() <= layout.size()
}

pub struct MiMalloc;

// SAFETY: each method hands mimalloc's C functions what they require: a size, and a
// power-of-two alignment (a `Layout`'s) where one is asked for; `dealloc` and `realloc` are
// given pointers this allocator returned, which `mi_free` and `mi_realloc*` accept
// whichever of mimalloc's functions allocated them. A block comes back with the layout's
// alignment: `mi_malloc` aligns blocks of 16 bytes or more to 16 (`malloc_aligns` asks it
// only for layouts of at most that alignment and at least that size), and the `_aligned`
// functions align to what they are given. Null is returned when memory runs out, as
// `GlobalAlloc` allows.
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if malloc_aligns(&layout) {
            ffi::mi_malloc(layout.size()).cast()
        } else {
            ffi::mi_malloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if malloc_aligns(&layout) {
            ffi::mi_zalloc(layout.size()).cast()
        } else {
            ffi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        ffi::mi_free(ptr.cast::<c_void>());
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = Layout::from_size_align_unchecked(new_size, layout.align());
        if malloc_aligns(&layout) && malloc_aligns(&new) {
            ffi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
        } else {
            ffi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_block_has_the_alignment_its_layout_asks_for() {
        let a = MiMalloc;
        for align in [1, 2, 4, 8, 16, 32, 64, 128, 4096] {
            for size in [
                1usize, 7, 8, 16, 24, 40, 48, 80, 1000, 1040, 1300, 5000, 70_000,
            ] {
                let size = size.next_multiple_of(align);
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: non-zero sizes; each block is used within its size, and freed
                // once, with the layout it has then.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    p.write_bytes(0xab, size);
                    let q = a.realloc(p, layout, size * 3);
                    assert_eq!(q as usize % align, 0, "realloc: size {size} align {align}");
                    assert_eq!(*q.add(size - 1), 0xab, "realloc keeps the contents");
                    a.dealloc(q, Layout::from_size_align(size * 3, align).unwrap());
                    let z = a.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0);
                    assert!((0..size).all(|i| *z.add(i) == 0));
                    a.dealloc(z, layout);
                }
            }
        }
    }
}
