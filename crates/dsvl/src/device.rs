//! Where the tensors live: `--device auto|cpu|cuda|cuda:N`.
//!
//! A binary built with the `cuda` feature (scripts/build-cuda.sh) does not depend on the CUDA
//! libraries at start-up: it opens them here, the first time a GPU is asked for, so the same
//! binary runs on a machine without a GPU or driver (on the CPU, saying why).

use std::fmt;
use std::str::FromStr;

use candle_core::Device;

use crate::{Error, Result};

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// The first GPU when this build has CUDA and the machine a usable GPU, else the CPU.
    #[default]
    Auto,
    Cpu,
    /// `cuda:N`, the GPU with ordinal N.
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim().to_ascii_lowercase();
        match s.as_str() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| format!("unknown device `{s}`: use auto, cpu, cuda or cuda:N")),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// The device chosen, and one line for the user saying which and, for `auto`, why.
#[derive(Debug, Clone)]
pub struct SelectedDevice {
    pub device: Device,
    pub description: String,
}

impl SelectedDevice {
    pub fn is_cuda(&self) -> bool {
        self.device.is_cuda()
    }
}

/// Whether this build can use NVIDIA GPUs at all.
pub const fn cuda_compiled() -> bool {
    cfg!(feature = "cuda")
}

/// Resolves `choice` to a device. `auto` never fails; an explicit `cuda[:N]` fails with the
/// reason when that GPU cannot be used.
pub fn select(choice: DeviceChoice) -> Result<SelectedDevice> {
    let cpu = |why: &str| SelectedDevice {
        device: Device::Cpu,
        description: if why.is_empty() {
            "cpu".to_string()
        } else {
            format!("cpu ({why})")
        },
    };
    match choice {
        DeviceChoice::Cpu => Ok(cpu("")),
        DeviceChoice::Auto if !cuda_compiled() => Ok(cpu("")),
        DeviceChoice::Auto => match open_cuda(0) {
            Ok(selected) => Ok(selected),
            Err(why) => Ok(cpu(&format!("no usable GPU: {why}"))),
        },
        DeviceChoice::Cuda(_) if !cuda_compiled() => Err(Error::Device(
            "this dsvl was built without CUDA support: build it with scripts/build-cuda.sh \
             (see the README), or use --device cpu"
                .to_string(),
        )),
        DeviceChoice::Cuda(n) => open_cuda(n)
            .map_err(|why| Error::Device(format!("cannot use cuda:{n}: {why}; use --device cpu"))),
    }
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(_ordinal: usize) -> std::result::Result<SelectedDevice, String> {
    Err("built without CUDA support".to_string())
}

#[cfg(feature = "cuda")]
fn open_cuda(ordinal: usize) -> std::result::Result<SelectedDevice, String> {
    cuda_libraries::load()?;
    // cudarc reports driver failures as errors; a panic would be a bug there, but it must not
    // take the CPU fallback down with it.
    let device = std::panic::catch_unwind(|| Device::new_cuda(ordinal))
        .map_err(|_| "the CUDA driver failed while opening the device".to_string())?
        // candle appends a backtrace to driver errors: the first line says what failed.
        .map_err(|e| {
            e.to_string()
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_string()
        })?;
    let description = match (gpu_name(&device), gpu_memory(&device)) {
        (Some(name), Some(m)) => format!(
            "cuda:{ordinal} ({name}, {:.0} GiB)",
            m.total as f64 / (1u64 << 30) as f64
        ),
        (Some(name), None) => format!("cuda:{ordinal} ({name})"),
        _ => format!("cuda:{ordinal}"),
    };
    Ok(SelectedDevice {
        device,
        description,
    })
}

/// Memory of the GPU a model lives on, as the driver reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuMemory {
    /// Bytes of device memory.
    pub total: u64,
    /// Bytes in use on the device now, by every process (`total − free`).
    pub used: u64,
    /// The most bytes this process's stream-ordered allocations held at once since start (the
    /// driver's memory-pool high-water mark; `None` when the allocations do not go through
    /// the pool).
    pub peak_allocated: Option<u64>,
}

/// [`GpuMemory`] of `device`; `None` on the CPU or when the driver does not answer.
pub fn gpu_memory(device: &Device) -> Option<GpuMemory> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(dev) = device {
        return cuda_memory(dev);
    }
    let _ = device;
    None
}

/// The GPU's name as the driver gives it (e.g. "NVIDIA H200"); `None` on the CPU.
pub fn gpu_name(device: &Device) -> Option<String> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(dev) = device {
        return dev.cuda_stream().context().name().ok();
    }
    let _ = device;
    None
}

#[cfg(feature = "cuda")]
fn cuda_memory(dev: &candle_core::CudaDevice) -> Option<GpuMemory> {
    use candle_core::cuda_backend::cudarc::driver::sys;

    let stream = dev.cuda_stream();
    let ctx = stream.context();
    let (free, total) = ctx.mem_get_info().ok()?;
    let peak_allocated = ctx.has_async_alloc().then(|| {
        let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
        let mut high: u64 = 0;
        // SAFETY: the context is current (mem_get_info bound it to this thread); the pool
        // handle is the device's current pool, only read; the attribute is a u64 (cuuint64_t).
        unsafe {
            sys::cuDeviceGetMemPool(&mut pool, ctx.cu_device())
                .result()
                .ok()?;
            sys::cuMemPoolGetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
                (&mut high as *mut u64).cast(),
            )
            .result()
            .ok()?;
        }
        Some(high)
    });
    Some(GpuMemory {
        total: total as u64,
        used: total.saturating_sub(free) as u64,
        peak_allocated: peak_allocated.flatten(),
    })
}

#[cfg(feature = "cuda")]
mod cuda_libraries {
    use std::ffi::{CStr, CString};
    use std::sync::OnceLock;

    /// The libraries candle's CUDA backend calls into, as the build linked them
    /// (scripts/build-cuda.sh passes the list; this default is for CUDA 13).
    fn names() -> Vec<&'static str> {
        option_env!("DSVL_CUDA_LIBS")
            .unwrap_or(
                "libcuda.so.1 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13",
            )
            .split_whitespace()
            .collect()
    }

    /// Opens every library with its symbols global, so the binary's lazily bound calls resolve
    /// to them. Done once; the outcome is remembered.
    pub(super) fn load() -> Result<(), String> {
        static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
        LOADED.get_or_init(load_all).clone()
    }

    fn load_all() -> Result<(), String> {
        for name in names() {
            let c_name = CString::new(name).map_err(|_| format!("bad library name {name:?}"))?;
            // SAFETY: dlopen with a NUL-terminated name; the handle is kept open for the life of
            // the process (never dlclose'd), as the binary's calls bind to it.
            let handle =
                unsafe { libc::dlopen(c_name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
            if handle.is_null() {
                let detail = last_dl_error();
                return Err(if name.starts_with("libcuda.") {
                    format!("the NVIDIA driver library {name} was not found ({detail}); this machine has no NVIDIA driver installed")
                } else {
                    format!(
                        "{name} was not found ({detail}); set LD_LIBRARY_PATH to the folder holding the CUDA libraries \
                         (for example the nvidia/cu13/lib folder of a PyTorch installation)"
                    )
                });
            }
        }
        Ok(())
    }

    fn last_dl_error() -> String {
        // SAFETY: dlerror returns NULL or a NUL-terminated string valid until the next dl* call.
        let msg = unsafe { libc::dlerror() };
        if msg.is_null() {
            "unknown error".to_string()
        } else {
            unsafe { CStr::from_ptr(msg) }
                .to_string_lossy()
                .into_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        assert_eq!("auto".parse(), Ok(DeviceChoice::Auto));
        assert_eq!("CPU".parse(), Ok(DeviceChoice::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceChoice::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceChoice::Cuda(3)));
        let err = "cuda:x".parse::<DeviceChoice>().unwrap_err();
        assert!(err.contains("cuda:N"), "{err}");
        assert!("metal".parse::<DeviceChoice>().is_err());
        assert_eq!(DeviceChoice::Cuda(1).to_string(), "cuda:1");
    }

    #[test]
    fn the_cpu_has_no_gpu_figures() {
        assert_eq!(gpu_memory(&Device::Cpu), None);
        assert_eq!(gpu_name(&Device::Cpu), None);
    }

    #[test]
    fn cpu_and_auto_always_resolve() {
        let cpu = select(DeviceChoice::Cpu).unwrap();
        assert!(cpu.device.is_cpu());
        assert_eq!(cpu.description, "cpu");
        // Auto falls back to the CPU with a reason when there is no GPU; never an error.
        let auto = select(DeviceChoice::Auto).unwrap();
        assert!(auto.device.is_cpu() || auto.is_cuda());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_how_to_get_it() {
        let err = select(DeviceChoice::Cuda(0)).unwrap_err().to_string();
        assert!(
            err.contains("without CUDA support") && err.contains("build-cuda.sh"),
            "{err}"
        );
    }
}
