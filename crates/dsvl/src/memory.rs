//! The process's memory: giving freed heap memory back to the OS, and reading what is resident.

/// Gives the memory the allocator holds freed back to the OS. glibc keeps freed heap memory
/// mapped (in every thread's arena), and after work that allocates and frees gigabytes in varied
/// sizes (a load's dtype conversions and quantization inputs, a vision tower's activations) it
/// would otherwise stay in the resident set for the life of the process. Costs a walk over the
/// allocator's free lists.
pub(crate) fn release_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only walks the allocator's own free lists; it takes no pointers.
        let released = unsafe { libc::malloc_trim(0) };
        tracing::trace!(
            released = released != 0,
            anon_kib = ?status_kib("RssAnon"),
            peak_kib = ?status_kib("VmHWM"),
            "malloc_trim"
        );
    }
}

/// A `/proc/self/status` field in kB (e.g. `VmHWM`, the peak resident set); `None` where there
/// is no procfs.
pub fn status_kib(field: &str) -> Option<u64> {
    proc_kib("/proc/self/status", field)
}

/// A `/proc/meminfo` field in kB (e.g. `MemAvailable`); `None` where there is no procfs.
pub fn meminfo_kib(field: &str) -> Option<u64> {
    proc_kib("/proc/meminfo", field)
}

fn proc_kib(path: &str, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}
