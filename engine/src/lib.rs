//! Tensor engine for blip2: devices, tensors and ops on a CPU backend (SIMD kernels from
//! `blip2-kernels`) and a GPU backend (WGSL kernels from `blip2-shaders` on wgpu).
//!
//! Every op checks shapes and dtypes and returns [`Error`] instead of panicking; accumulation
//! is always f32 whatever the storage dtype.

mod bf16;
mod cpu;
mod desc;
mod device;
mod dtype;
mod error;
pub mod gpu;
mod host;
pub mod ops;
mod panels;
mod quant;
mod stored;
mod tensor;
#[doc(hidden)]
pub mod testing;

pub use device::{Device, DeviceInfo};
pub use dtype::{DType, QFormat, StoredDType};
pub use error::{Error, Result};
pub use host::SharedBytes;
pub use ops::AttnOpts;
pub use panels::{panels_for_mapped, panels_preferred};
pub use quant::QuantBytes;
pub use tensor::Tensor;
