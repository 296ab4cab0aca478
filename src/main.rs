//! The `imgate` binary: everything lives in the library; see `imgate --help`.

fn main() -> std::process::ExitCode {
    imgate::cli::main()
}

/// mimalloc: the request path's allocations (a few small blocks per request, freed on the same
/// thread) cost about a third of what glibc's malloc costs them (benches/cache.sh, callgrind).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
