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
            anon_mib = ?status_mib("RssAnon:"),
            peak_mib = ?status_mib("VmHWM:"),
            "malloc_trim"
        );
    }
}

/// A `/proc/self/status` memory line (e.g. `VmRSS:`) in MiB; `None` where there is no procfs.
#[cfg_attr(not(all(target_os = "linux", target_env = "gnu")), allow(dead_code))]
pub(crate) fn status_mib(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? / 1024)
}
