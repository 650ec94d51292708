//! Which instruction sets the kernels use: detected once, capped by `DSVL_ISA`.
//!
//! Every kernel has one path per [`Isa`] level; a level implies the ones below it. Setting
//! `DSVL_ISA` to a lower level (`portable`, `avx2`, `avx512`, `avx512bf16`) makes every kernel
//! take that level's path, so one machine tests all the paths it can run (the test suite does it
//! with [`with_cap`]). A level above what the CPU has is clamped to what it has.

use std::sync::atomic::{AtomicU8, Ordering};

/// Instruction-set levels, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Plain Rust, any CPU (the compiler may still vectorise it).
    Portable,
    /// x86-64 AVX2 + FMA (Haswell, Zen 1 and later).
    Avx2,
    /// AVX-512 F/BW/VL/DQ (Skylake-SP and later, Zen 4).
    Avx512,
    /// AVX-512 plus the BF16 dot product `vdpbf16ps` (Cooper Lake, Sapphire Rapids, Zen 4).
    Avx512Bf16,
}

impl Isa {
    pub const ALL: [Isa; 4] = [Isa::Portable, Isa::Avx2, Isa::Avx512, Isa::Avx512Bf16];

    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Avx512Bf16 => "avx512bf16",
        }
    }

    /// Parses a `DSVL_ISA` value.
    pub fn parse(s: &str) -> Option<Isa> {
        Isa::ALL
            .into_iter()
            .find(|i| i.name().eq_ignore_ascii_case(s.trim()))
    }

    /// The highest level this CPU supports.
    pub fn detected() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let avx2 = has!("avx2") && has!("fma");
            let avx512 =
                avx2 && has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512dq");
            if avx512 && has!("avx512bf16") {
                return Isa::Avx512Bf16;
            }
            if avx512 {
                return Isa::Avx512;
            }
            if avx2 {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }

    /// The CPU features a machine report should name (`lscpu`-style flags that matter here).
    pub fn cpu_features() -> Vec<&'static str> {
        #[allow(unused_mut)]
        let mut out = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            macro_rules! push {
                ($($f:tt),*) => { $( if has!($f) { out.push($f); } )* };
            }
            push!(
                "avx2",
                "fma",
                "f16c",
                "avxvnni",
                "avx512f",
                "avx512bw",
                "avx512vl",
                "avx512vnni",
                "avx512bf16"
            );
            // AMX's runtime detection is not stable in std yet: CPUID leaf 7, EDX bits 22, 24
            // and 25.
            // SAFETY: CPUID leaf 7 exists on every x86-64 CPU with AVX2 (checked first).
            if has!("avx2") {
                let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
                for (bit, name) in [(24, "amx-tile"), (22, "amx-bf16"), (25, "amx-int8")] {
                    if edx >> bit & 1 == 1 {
                        out.push(name);
                    }
                }
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            use std::arch::is_aarch64_feature_detected as has;
            if has!("neon") {
                out.push("neon");
            }
            if has!("dotprod") {
                out.push("dotprod");
            }
            if has!("bf16") {
                out.push("bf16");
            }
        }
        out
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// 0 = not resolved yet; otherwise `Isa as u8 + 1`.
static ACTIVE: AtomicU8 = AtomicU8::new(0);

fn encode(i: Isa) -> u8 {
    i as u8 + 1
}

fn decode(v: u8) -> Isa {
    Isa::ALL[(v - 1) as usize]
}

thread_local! {
    /// A cap for the calling thread only ([`with_each_level`]): kernels read the level once, on
    /// the thread that calls them, and hand it to their worker tasks.
    static THREAD_CAP: std::cell::Cell<Option<Isa>> = const { std::cell::Cell::new(None) };
}

/// The level kernels use now: the detected level, capped by `DSVL_ISA` when it is set (an
/// unknown value is ignored with a warning on stderr, once), and by the calling thread's cap
/// inside [`with_each_level`].
pub fn active() -> Isa {
    let global = global_level();
    match THREAD_CAP.with(|c| c.get()) {
        Some(cap) => cap.min(global),
        None => global,
    }
}

fn global_level() -> Isa {
    match ACTIVE.load(Ordering::Relaxed) {
        0 => {
            let detected = Isa::detected();
            let isa = match std::env::var("DSVL_ISA") {
                Ok(v) => match Isa::parse(&v) {
                    Some(cap) => cap.min(detected),
                    None => {
                        eprintln!(
                            "warning: DSVL_ISA={v:?} is not one of portable, avx2, avx512, \
                             avx512bf16; using {detected}"
                        );
                        detected
                    }
                },
                Err(_) => detected,
            };
            ACTIVE.store(encode(isa), Ordering::Relaxed);
            isa
        }
        v => decode(v),
    }
}

/// Caps the level for the rest of the process (clamped to the detected level); returns the
/// level now active. Weights packed before a change keep working: every layout is readable by
/// every path.
pub fn set_cap(cap: Isa) -> Isa {
    let isa = cap.min(Isa::detected());
    ACTIVE.store(encode(isa), Ordering::Relaxed);
    isa
}

/// Runs `f` once per level this CPU supports (up to the process's level), with the calling
/// thread's level capped to it; for tests. Other threads are not affected, so tests that run
/// side by side keep their own paths.
pub fn with_each_level(mut f: impl FnMut(Isa)) {
    let before = THREAD_CAP.with(|c| c.get());
    for isa in Isa::ALL.into_iter().filter(|&i| i <= global_level()) {
        THREAD_CAP.with(|c| c.set(Some(isa)));
        f(isa);
    }
    THREAD_CAP.with(|c| c.set(before));
}

/// Serialises tests that change the process-wide level ([`set_cap`]).
pub static LEVEL_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_levels_are_ordered() {
        for i in Isa::ALL {
            assert_eq!(Isa::parse(i.name()), Some(i));
        }
        assert_eq!(Isa::parse(" AVX2 "), Some(Isa::Avx2));
        assert_eq!(Isa::parse("amx"), None);
        assert!(Isa::Portable < Isa::Avx2 && Isa::Avx512 < Isa::Avx512Bf16);
        // A thread's cap applies to that thread only.
        let mut seen = Vec::new();
        with_each_level(|level| {
            seen.push(level);
            assert_eq!(active(), level);
            let other = std::thread::spawn(active).join().unwrap_or(Isa::Portable);
            assert_eq!(other, global_level());
        });
        assert_eq!(seen.first(), Some(&Isa::Portable));
        assert_eq!(seen.last(), Some(&global_level()));
        assert_eq!(active(), global_level());
    }
}
