//! The process's allocator: mimalloc, asked for most blocks through its plain `mi_malloc`.
//!
//! The `mimalloc` crate hands every request to `mi_malloc_aligned`. For a block over 1 KiB, or
//! one whose size is not a power of two, mimalloc's aligned path over-allocates by the alignment
//! and takes its generic route: the request path's boxed future (2.4 KiB, once per request)
//! cost about 450 instructions there (`benches/callgrind.sh`). mimalloc's plain blocks are
//! aligned to 8 bytes, and to 16 from 16 bytes up; every block taken the plain way is checked
//! all the same, and one that is not aligned enough is given back and asked for again through
//! the aligned path. Blocks from either path are freed and resized alike (`mi_free`,
//! `mi_realloc_aligned`).
//!
//! Not part of the library, which has no `unsafe`: the binary (`src/main.rs`, where its test
//! is) and the memory benchmark (`benches/cache_memory.rs`) include this file.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// The largest alignment asked of the plain path: `max_align_t`'s, which mimalloc's bins are
/// laid out for.
const PLAIN_MAX_ALIGN: usize = 16;

/// mimalloc as the global allocator.
pub struct MiMalloc;

// SAFETY: every block comes from mimalloc with at least the layout's size and alignment (checked
// for the plain path, guaranteed by `mi_*_aligned` otherwise), or is null on failure; mimalloc
// frees and resizes blocks of either path.
unsafe impl GlobalAlloc for MiMalloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: plain FFI calls with a size and a power-of-two alignment.
        unsafe { plain_or_aligned(layout, mi::mi_malloc, mi::mi_malloc_aligned) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        unsafe { plain_or_aligned(layout, mi::mi_zalloc, mi::mi_zalloc_aligned) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator, that is from mimalloc.
        unsafe { mi::mi_free(ptr.cast()) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from mimalloc; the aligned resize keeps the layout's alignment.
        unsafe { mi::mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast() }
    }
}

/// A block of `layout` from `plain` when its alignment is one plain blocks have (checked), else
/// from `aligned`.
///
/// # Safety
/// `plain` and `aligned` must be mimalloc's allocation functions.
unsafe fn plain_or_aligned(
    layout: Layout,
    plain: unsafe extern "C" fn(usize) -> *mut c_void,
    aligned: unsafe extern "C" fn(usize, usize) -> *mut c_void,
) -> *mut u8 {
    let (size, align) = (layout.size(), layout.align());
    if align <= PLAIN_MAX_ALIGN {
        // SAFETY: mimalloc's allocation function, any size.
        let block = unsafe { plain(size) };
        // A null block (out of memory) passes: the caller sees the failure.
        if block as usize & (align - 1) == 0 {
            return block.cast();
        }
        // SAFETY: the block came from mimalloc and is not used.
        unsafe { mi::mi_free(block) };
    }
    // SAFETY: mimalloc's aligned allocation function, a power-of-two alignment.
    unsafe { aligned(size, align).cast() }
}
