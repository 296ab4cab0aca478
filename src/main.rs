//! The `imgate` binary: everything lives in the library; see `imgate --help`.

fn main() -> std::process::ExitCode {
    imgate::cli::main()
}

mod allocator;

/// mimalloc: the request path's allocations (a few small blocks per request, freed on the same
/// thread) cost about a third of what glibc's malloc costs them (benches/cache.sh, callgrind).
#[global_allocator]
static ALLOCATOR: allocator::MiMalloc = allocator::MiMalloc;

#[cfg(test)]
mod tests {
    use std::alloc::{GlobalAlloc, Layout};

    use super::allocator::MiMalloc;

    #[test]
    fn blocks_have_their_layouts_alignment_and_size() {
        let mut blocks = Vec::new();
        for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
            for size in (1..=64).chain([100, 1000, 1025, 2400, 4096, 70_000]) {
                let Ok(layout) = Layout::from_size_align(size, align) else {
                    continue;
                };
                for zeroed in [false, true] {
                    // SAFETY: a non-zero size; the block is checked, written and freed below.
                    let block = unsafe {
                        if zeroed {
                            MiMalloc.alloc_zeroed(layout)
                        } else {
                            MiMalloc.alloc(layout)
                        }
                    };
                    assert!(!block.is_null(), "{layout:?}");
                    assert_eq!(block as usize % align, 0, "{layout:?}");
                    // SAFETY: the block holds `size` bytes.
                    let bytes = unsafe { std::slice::from_raw_parts_mut(block, size) };
                    if zeroed {
                        assert!(bytes.iter().all(|b| *b == 0), "{layout:?}");
                    }
                    bytes.fill(0xa5);
                    blocks.push((block, layout));
                }
            }
        }
        for (block, layout) in blocks {
            // SAFETY: the block came from `MiMalloc` with this layout; it grows, keeps its
            // contents and alignment, and is freed once.
            unsafe {
                let grown = MiMalloc.realloc(block, layout, layout.size() * 3);
                assert!(!grown.is_null());
                assert_eq!(grown as usize % layout.align(), 0, "{layout:?}");
                assert_eq!(*grown.add(layout.size() - 1), 0xa5, "{layout:?}");
                let new_layout =
                    Layout::from_size_align_unchecked(layout.size() * 3, layout.align());
                MiMalloc.dealloc(grown, new_layout);
            }
        }
    }
}
