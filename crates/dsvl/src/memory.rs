//! The process's memory: giving freed heap memory back to the OS, and reading what is resident.

/// Gives the memory the allocator holds freed back to the OS. glibc keeps freed heap memory
/// mapped (in every thread's arena), and after work that allocates and frees gigabytes in varied
/// sizes (a load's dtype conversions and quantization inputs, a vision tower's activations) it
/// would otherwise stay in the resident set for the life of the process. Costs a walk over the
/// allocator's free lists.
pub fn release_freed() {
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

/// A zero-filled `Vec<f32>` of `len` whose pages the kernel is asked to back with transparent
/// huge pages (2 MiB) when they are first written (`madvise(MADV_HUGEPAGE)`; with THP in
/// "madvise" mode, a common default, big buffers otherwise get 4 KiB pages). For the weights:
/// loading writes gigabytes of fresh memory, one page fault per 4 KiB otherwise, and every
/// decode step streams all of them, one TLB miss per 4 KiB otherwise. Elsewhere, or where THP
/// is off, an ordinary zeroed vector.
pub(crate) fn huge_page_vec_f32(len: usize) -> Vec<f32> {
    // Zeroed allocation: a big one is fresh, untouched mmap memory, so the advice comes first.
    let v = vec![0f32; len];
    advise_huge_pages(v.as_ptr().cast(), len * std::mem::size_of::<f32>());
    v
}

/// [`huge_page_vec_f32`] for bf16.
pub(crate) fn huge_page_vec_bf16(len: usize) -> Vec<half::bf16> {
    let v = vec![0u16; len];
    advise_huge_pages(v.as_ptr().cast(), len * std::mem::size_of::<u16>());
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: bf16 is `repr(transparent)` over u16 (same size and alignment, every bit pattern a
    // value, 0 is +0.0); the buffer is handed over whole, with its length and capacity.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr().cast::<half::bf16>(), v.len(), v.capacity()) }
}

fn advise_huge_pages(ptr: *const u8, len: usize) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = (ptr as usize).next_multiple_of(HUGE);
        let end = (ptr as usize + len) & !(HUGE - 1);
        if end > start {
            // SAFETY: the range lies inside the caller's live allocation and is page-aligned;
            // MADV_HUGEPAGE changes only how its pages are backed, never their contents.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (ptr, len);
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
