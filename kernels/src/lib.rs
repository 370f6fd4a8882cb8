//! CPU kernels for blip2: plain functions over `&[f32]` / `&[f16]` slices, with runtime
//! instruction-set dispatch (AVX-512, AVX2+FMA, NEON, portable scalar).
//!
//! Every kernel has a default entry point that uses [`isa()`] (detected once; lowered by
//! `BLIP2_CPU_ISA=scalar|avx2|avx512|neon`) and a `*_with(isa, ..)` form so each path can be
//! exercised; an `isa` the CPU lacks is lowered to one it has ([`Isa::resolve`]), never run.
//! All arithmetic accumulates in f32. Kernels know nothing about models; shape checks against
//! user input belong to the caller (the engine) — the `assert!`s here are internal invariants.

mod aligned;
mod amx_qint8;
mod amx_quant;
mod amx_split;
mod attention;
mod bf16;
mod convert;
mod dpbf16_quant;
mod elementwise;
mod finite;
mod gemm;
mod im2col;
mod isa;
#[cfg(target_arch = "aarch64")]
mod neon;
mod norm;
mod packed;
mod quant;
mod team;
mod vmath;
#[cfg(target_arch = "x86_64")]
mod x86;
#[cfg(target_arch = "x86_64")]
mod x86_amx;
#[cfg(target_arch = "x86_64")]
mod x86_dpbf16;
#[cfg(target_arch = "x86_64")]
mod x86_packed;
#[cfg(target_arch = "x86_64")]
mod x86_packed_avx2;
#[cfg(target_arch = "x86_64")]
mod x86_prefetch;
#[cfg(target_arch = "x86_64")]
mod x86_qtiles;
#[cfg(target_arch = "x86_64")]
mod x86_quant;
#[cfg(target_arch = "x86_64")]
mod x86_vnni;

pub use aligned::{AlignedVec, LINE, zeroed_vec};
pub use amx_qint8::{INT8_MAX_M, matmul_q_amx_int8_with, quant_amx_int8_available};
pub use amx_quant::{matmul_q_amx_with, quant_amx_available};
pub use amx_split::{
    SPLIT_MIN_M, SplitWeights, matmul_packed_split_with, split_applies, split_available,
    split_weights,
};
pub use attention::{AttnLayout, AttnParams, attention, attention_in, attention_with};
pub use bf16::{
    AMX_MIN_M, BF16_BLOCK_K, BF16_BLOCK_ROWS, Bf16Activations, Bf16Matrix, amx_available,
    bf16_packed_len, dpbf16_available, matmul_bf16, matmul_bf16_with, pack_bf16, unpack_bf16,
    unpack_bf16_row,
};
pub use convert::{
    bf16_to_f32, bf16_to_f32_with, f16_to_f32, f16_to_f32_with, f32_to_f16, f32_to_f16_with,
};
pub use dpbf16_quant::{
    DPBF16_ANY_MAX_M, dpbf16_doubles_fma, matmul_q_dpbf16_with, quant_dpbf16_available,
};
pub use elementwise::{
    add, add_inplace, add_inplace_with, add_with, gelu_erf_inplace, gelu_erf_inplace_with,
    gelu_tanh_inplace, gelu_tanh_inplace_with, log_softmax_inplace, mul, mul_inplace,
    mul_inplace_with, mul_with, relu_inplace, relu_inplace_with, scale_inplace, scale_inplace_with,
    silu_inplace, silu_inplace_with, softmax_inplace, softmax_inplace_with,
};
pub use finite::{FloatBits, count_nonfinite, count_nonfinite_with, f16_overflow, first_nonfinite};
pub use gemm::{BSlice, batched_matmul, batched_matmul_with, matmul, matmul_with};
pub use im2col::im2col_patches;
pub use isa::{Isa, best_isa, cpu_amd_family, cpu_is_amd, isa, supported_isas};
pub use norm::{layer_norm, layer_norm_with, rms_norm, rms_norm_with};
pub use packed::{
    PANEL, PackedData, PackedMatrix, checked_packed_len, matmul_packed, matmul_packed_with,
    pack_linear, pack_linear_with, packed_in_place_too, packed_preferred, unpack_packed,
    unpack_packed_row,
};
pub use quant::{
    QActivations, QBLOCK, QFormat, QMatrix, QuantKernel, QuantPath, dequantize,
    dequantize_matrix_row, dequantize_row, matmul_q, matmul_q_path, matmul_q_with, quant_kernel,
    quantize_row, quantize_rows, vnni_available,
};
