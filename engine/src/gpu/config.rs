//! Switches of the GPU backend: every fast path can be turned off (driver bugs happen) and
//! the runtime's bounds can be changed, from the environment or programmatically.

/// Options of a [`super::GpuContext`]. [`GpuOptions::from_env`] reads:
/// - `BLIP2_GPU_NO_SUBGROUPS=1`: plain workgroup reductions even when the adapter has
///   `SUBGROUP` (the feature is then not requested either).
/// - `BLIP2_GPU_NO_GEMV=1`: the tiled matmul also for 1..=4 rows (no GEMV kernel).
/// - `BLIP2_GPU_NO_VEC4=1`: scalar loads in matmul/GEMV instead of 16-byte vector loads.
/// - `BLIP2_GPU_NO_FUSED_ATTN=1`: attention always as matmul + softmax + matmul.
/// - `BLIP2_GPU_NO_FLASH_ATTN=1`: attention over more than 32 queries (ViT, prefill) as
///   matmul + softmax + matmul instead of the flash kernel (which never writes the scores).
/// - `BLIP2_GPU_NO_COOP=1`: no tensor-core linear layers. Without it, linear layers over f16
///   weights run `coop_matmul.wgsl` (16×16×16 f16 cooperative matrices) where the adapter
///   offers them and the kernel passes its self-check on first use (a product that is exact
///   in any order, every output compared; a failure is reported once on stderr and the
///   context keeps the tiled matmul). The kernel rounds x to f16: with f32 activations (the
///   models' f16-weight layers) it runs only with `BLIP2_GPU_F16_MATH_F32_ACT=1`, below.
/// - `BLIP2_GPU_NO_FUSED_DECODE=1`: decode layers unfused: no GEMV norm prologue /
///   activation, gate or residual epilogues (`ops::linear_fused`), and the new token's K/V
///   written by a copy before the attention instead of inside it (`ops::attention_append`).
/// - `BLIP2_GPU_NO_F16_MATH=1`: f16 weights read as packed pairs (`unpack2x16float`) and
///   multiplied in f32 everywhere, even when the adapter has `SHADER_F16`; with the feature
///   and without the switch, the GEMV (16-byte loads) and the tiled matmul with both
///   operands stored f16 compute in f16 with f32 accumulation (see `blip2-shaders`'
///   gemv.wgsl and matmul.wgsl).
/// - `BLIP2_GPU_F16_MATH_F32_ACT=1`: f16 arithmetic also for f32 activations times f16
///   weights (the models' f16-weight layers), rounding the activations to f16 as they are
///   read. Off by default: it changes what f32 activations promise (see
///   docs/architecture.md, "f16 arithmetic", for the measured error).
/// - `BLIP2_GPU_NO_DEVICE_ARGMAX=1`: greedy tokens chosen on the host from downloaded
///   logits (`ops::argmax_rows` without its kernel).
/// - `BLIP2_GPU_NO_DEVICE_TOPK=1`: top-k candidates chosen on the host from downloaded
///   logits (`ops::top_candidates` without its kernel).
/// - `BLIP2_GPU_NO_BIND_CACHE=1`: a fresh bind group per dispatch.
/// - `BLIP2_GPU_MAX_BATCH=N`: dispatches recorded before a submit (default 1024).
/// - `BLIP2_GPU_POOL_MB=N`: bytes of free buffers the pool keeps (default 2048 MiB).
/// - `BLIP2_GPU_MAX_BINDING=N`: lower the storage binding size limit to N bytes (tests the
///   sub-range paths on small tensors).
/// - `BLIP2_GPU_DUMP_WGSL=DIR`: write every specialised kernel source to DIR.
#[derive(Clone, Debug)]
pub struct GpuOptions {
    pub subgroups: bool,
    pub gemv: bool,
    pub vec4: bool,
    pub fused_attention: bool,
    pub flash_attention: bool,
    pub coop_matrix: bool,
    pub fused_decode: bool,
    pub f16_math: bool,
    pub f16_math_f32_act: bool,
    pub device_argmax: bool,
    pub device_topk: bool,
    pub bind_group_cache: bool,
    pub max_batch: usize,
    pub pool_bytes: u64,
    pub max_binding: Option<u64>,
    pub dump_wgsl: Option<std::path::PathBuf>,
}

impl Default for GpuOptions {
    fn default() -> Self {
        GpuOptions {
            subgroups: true,
            gemv: true,
            vec4: true,
            fused_attention: true,
            flash_attention: true,
            coop_matrix: true,
            fused_decode: true,
            f16_math: true,
            f16_math_f32_act: false,
            device_argmax: true,
            device_topk: true,
            bind_group_cache: true,
            max_batch: 1024,
            pool_bytes: 2048 << 20,
            max_binding: None,
            dump_wgsl: None,
        }
    }
}

fn flag(name: &str) -> bool {
    matches!(
        std::env::var(name).as_deref(),
        Ok("1") | Ok("true") | Ok("yes")
    )
}

fn number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

impl GpuOptions {
    pub fn from_env() -> GpuOptions {
        let d = GpuOptions::default();
        GpuOptions {
            subgroups: !flag("BLIP2_GPU_NO_SUBGROUPS"),
            gemv: !flag("BLIP2_GPU_NO_GEMV"),
            vec4: !flag("BLIP2_GPU_NO_VEC4"),
            fused_attention: !flag("BLIP2_GPU_NO_FUSED_ATTN"),
            flash_attention: !flag("BLIP2_GPU_NO_FLASH_ATTN"),
            coop_matrix: !flag("BLIP2_GPU_NO_COOP"),
            fused_decode: !flag("BLIP2_GPU_NO_FUSED_DECODE"),
            f16_math: !flag("BLIP2_GPU_NO_F16_MATH"),
            f16_math_f32_act: flag("BLIP2_GPU_F16_MATH_F32_ACT"),
            device_argmax: !flag("BLIP2_GPU_NO_DEVICE_ARGMAX"),
            device_topk: !flag("BLIP2_GPU_NO_DEVICE_TOPK"),
            bind_group_cache: !flag("BLIP2_GPU_NO_BIND_CACHE"),
            max_batch: number("BLIP2_GPU_MAX_BATCH")
                .map_or(d.max_batch, |n| n.clamp(1, 65536) as usize),
            pool_bytes: number("BLIP2_GPU_POOL_MB").map_or(d.pool_bytes, |n| n << 20),
            max_binding: number("BLIP2_GPU_MAX_BINDING"),
            dump_wgsl: std::env::var_os("BLIP2_GPU_DUMP_WGSL").map(Into::into),
        }
    }
}
