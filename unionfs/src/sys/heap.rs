//! Giving freed heap back to the system: glibc keeps what a program frees for its next
//! allocations, so a daemon that cached a large tree once would hold that memory for good.

/// Returns the free pages of every malloc arena to the system (`malloc_trim(0)`): after
/// the kernel forgot most of a large tree, the nodes' memory is free but scattered between
/// live allocations, and only `malloc_trim` releases such pages (plain `free` gives back
/// only the top of the heap). It walks every arena, so callers rate-limit it.
pub fn trim() {
    // SAFETY: malloc_trim only reorganizes the allocator's own free lists under its locks;
    // it takes no pointer and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
