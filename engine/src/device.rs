use std::fmt;
use std::sync::Arc;

use crate::gpu::GpuContext;
use crate::{Error, Result};

/// Where tensors live and ops run.
#[derive(Clone)]
pub enum Device {
    Cpu,
    Gpu(Arc<GpuContext>),
}

/// What a device is and what it can do, for `blip2 info` and for choosing kernels.
#[derive(Clone, Debug, Default)]
pub struct DeviceInfo {
    /// "cpu" or the adapter name.
    pub name: String,
    /// "cpu (avx512)" / "Vulkan" / "Metal" ...
    pub backend: String,
    pub driver: String,
    pub device_type: String,
    pub shader_f16: bool,
    pub subgroups: bool,
    pub subgroup_min_size: u32,
    pub subgroup_max_size: u32,
    pub timestamp_query: bool,
    pub cooperative_matrix: bool,
    pub max_storage_buffer_binding_size: u64,
    pub max_buffer_size: u64,
    pub max_compute_workgroup_storage_size: u32,
    pub max_compute_invocations_per_workgroup: u32,
    pub threads: usize,
}

impl Device {
    pub fn cpu() -> Device {
        Device::Cpu
    }

    /// Opens the GPU adapter chosen by wgpu (honouring `WGPU_BACKEND`, `WGPU_ADAPTER_NAME`
    /// and `WGPU_POWER_PREF`); the error names why none could be opened.
    pub fn gpu() -> Result<Device> {
        Ok(Device::Gpu(Arc::new(GpuContext::new()?)))
    }

    /// `BLIP2_DEVICE=cpu|gpu` forces a choice; otherwise a GPU adapter if one opens, else the CPU.
    pub fn auto() -> Result<Device> {
        Ok(Self::auto_with_reason()?.0)
    }

    /// Like [`Device::auto`], also returning a sentence that says why this device was picked.
    pub fn auto_with_reason() -> Result<(Device, String)> {
        match std::env::var("BLIP2_DEVICE").ok().as_deref() {
            Some("cpu") => Ok((Device::Cpu, "BLIP2_DEVICE=cpu".to_string())),
            Some("gpu") => Ok((Device::gpu()?, "BLIP2_DEVICE=gpu".to_string())),
            Some("") | Some("auto") | None => match Device::gpu() {
                // A software rasterizer (llvmpipe, SwiftShader, WARP) runs WGSL far slower
                // than the SIMD CPU backend: only a real GPU wins the automatic choice.
                Ok(d) if d.info().device_type == "Cpu" => Ok((
                    Device::Cpu,
                    format!(
                        "the only GPU adapter, '{}', is a software renderer; the CPU backend is faster (use --device gpu or BLIP2_DEVICE=gpu to force it)",
                        d.info().name
                    ),
                )),
                Ok(d) => {
                    let why = format!("GPU adapter '{}' is available", d.info().name);
                    Ok((d, why))
                }
                Err(e) => Ok((Device::Cpu, format!("no usable GPU ({e}), using the CPU"))),
            },
            Some(other) => Err(Error::Invalid(format!(
                "BLIP2_DEVICE='{other}' (expected cpu, gpu or auto)"
            ))),
        }
    }

    pub fn is_gpu(&self) -> bool {
        matches!(self, Device::Gpu(_))
    }

    pub fn info(&self) -> DeviceInfo {
        match self {
            Device::Cpu => {
                let isa = blip2_kernels::isa();
                // AMX, else AVX512-BF16, is what the bf16 weights use for their matmuls
                // (docs/cpu.md).
                let amx = if blip2_kernels::amx_available() {
                    ", AMX-BF16"
                } else if blip2_kernels::dpbf16_available() {
                    ", AVX512-BF16"
                } else {
                    ""
                };
                // VNNI is what the q8/q4 decode GEMV uses on AVX-512, AMX-INT8 what their 2 to
                // 16 rows use (docs/quantization.md).
                let avx512 = isa == blip2_kernels::Isa::Avx512;
                let vnni = if avx512 && blip2_kernels::vnni_available() {
                    ", VNNI"
                } else {
                    ""
                };
                let int8 = if avx512 && blip2_kernels::quant_amx_int8_available() {
                    ", AMX-INT8"
                } else {
                    ""
                };
                // f32/f16 weights packed at load into the GEMM's panels (docs/cpu.md).
                let panels = if crate::panels_preferred() {
                    ", panels"
                } else {
                    ""
                };
                // Which panels take the split bf16 path on AMX from 48 rows (docs/cpu.md).
                let split = match blip2_kernels::split_weights() {
                    blip2_kernels::SplitWeights::Off => "",
                    blip2_kernels::SplitWeights::F16 => ", f16 split",
                    blip2_kernels::SplitWeights::All => ", f16/f32 split",
                };
                DeviceInfo {
                    name: "cpu".into(),
                    backend: format!("cpu ({isa:?}{amx}{int8}{vnni}{panels}{split})"),
                    driver: String::new(),
                    device_type: "Cpu".into(),
                    threads: rayon::current_num_threads(),
                    ..Default::default()
                }
            }
            Device::Gpu(g) => g.info(),
        }
    }

    /// Waits for all queued GPU work (no-op on the CPU). Useful for timing stages.
    pub fn synchronize(&self) -> Result<()> {
        match self {
            Device::Cpu => Ok(()),
            Device::Gpu(g) => g.synchronize(),
        }
    }

    pub(crate) fn same(&self, other: &Device) -> bool {
        match (self, other) {
            (Device::Cpu, Device::Cpu) => true,
            (Device::Gpu(a), Device::Gpu(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Gpu(g) => write!(f, "gpu({})", g.info().name),
        }
    }
}
