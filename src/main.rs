use std::process::ExitCode;

/// The image's allocator (`--features jemalloc`, which `hack/build-release.sh` sets with its
/// settings): musl's own keeps the memory of freed allocations after a burst, jemalloc hands it
/// back to the system.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    model_operator::cli::main()
}
