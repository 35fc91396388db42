//! The `warrant` binary: the library's command line, on jemalloc.

use std::ffi::c_char;

/// jemalloc rather than glibc's malloc, for the daemon only (tests and
/// tools keep the system allocator). Measured on the deployed bench:
/// glibc's arenas never gave back the memory of 10,000 closed connections
/// (`malloc_trim` only trims the top of each heap) and malloc/free were
/// about 10% of the CPU per request; jemalloc's thread caches make the
/// small allocations of a request cheap, and its decay (below) returns
/// freed pages to the system.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options: the C string it reads at its first allocation
/// (before `main`), under the name the prefixed build (`_rjem_`) looks for.
#[repr(transparent)]
struct MallocConf(*const c_char);

// Safety: the pointer is to a `'static` string that nothing writes.
unsafe impl Sync for MallocConf {}

/// - `background_thread:true`: a jemalloc thread returns freed pages to
///   the system on the decay schedule, also while the workers are idle
///   (without it, purging happens only when a thread allocates again, so
///   a burst's memory stayed resident after it ended). Costs one thread.
/// - `dirty_decay_ms:1000`: freed pages go back within about a second of
///   being freed (jemalloc's default is 10 s). Faster return costs page
///   faults when the next burst needs the memory again; a second is long
///   against a request and short against an operator's `ps`.
/// - `muzzy_decay_ms:0`: no MADV_FREE stage: pages leave the RSS when
///   purged, not when the kernel is short of memory.
/// - `narenas:2`: the default is four arenas per CPU, each with its own
///   dirty pages and metadata; the request path runs on one thread per CPU,
///   so two arenas (one per core on the 2-CPU machines this is sized for;
///   more CPUs share them) keep contention low and the idle footprint small.
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: MallocConf =
    MallocConf(c"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0,narenas:2".as_ptr());

fn main() -> std::process::ExitCode {
    warrant::cli::main()
}
