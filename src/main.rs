//! The `eddy` binary: the command line over the built-in jobs.

use std::process::ExitCode;

// Records and batches are allocated and freed at a high rate on every worker
// thread; jemalloc's thread caches cost much less than glibc's malloc here,
// and it returns memory to the system gradually (see docs/decisions.md).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    eddy::cli::main(eddy::runtime::component::Registry::builtin())
}
