//! WGSL sources of the blip2 GPU kernels, one file per kernel family, plus the small
//! specialisation step that turns a source into one pipeline variant.
//!
//! Conventions shared by every kernel (the engine's GPU runtime relies on them):
//! - Binding 0 is a `var<uniform> p: Params` read at a dynamic offset in one uniform arena.
//!   `Params` holds 4-byte scalars only (no vectors, so its layout is sequential) and is at
//!   most [`PARAMS_BYTES`] bytes.
//! - Then the read-only storage bindings, then the read-write ones, in declaration order.
//! - Tensors are raw 32-bit words (`array<u32>` or `array<vec4<u32>>`): f32 elements are
//!   `bitcast`, f16 elements are IEEE halves packed two per word (element `i` is half
//!   `i & 1` of word `i >> 1`) and read with `unpack2x16float`. This needs no `SHADER_F16`,
//!   so f16 storage works on every adapter; the storage dtype of each operand is a
//!   `const NAME_F16: bool` that [`specialise`] sets.
//! - A kernel writing f16 always writes whole words (two adjacent elements per invocation),
//!   so no two invocations ever write the same word.
//! - Grids larger than 65535 workgroups in x are folded into y: the linear workgroup id is
//!   `wid.x + wid.y * p.groups_x`.
//! - Subgroup code (when the adapter has `SUBGROUP`) lives in lines starting `//SG ` that
//!   [`specialise`] un-comments, and the plain fallback in lines ending `//NOSG` that it
//!   comments out; the file as stored is the portable fallback, valid WGSL on its own.
//!   (naga 30 rejects `enable subgroups;` as not yet implemented and accepts the subgroup
//!   builtins when the device has the `SUBGROUP` feature, so no directive is emitted.)

/// Largest `Params` struct of any kernel, in bytes (the uniform binding size).
pub const PARAMS_BYTES: u64 = 128;

/// Matrix-vector product for linear layers with 1..=4 rows of x (decode).
pub const GEMV: &str = include_str!("../wgsl/gemv.wgsl");
/// Tiled, register-blocked batched matmul (linear with M > 4, attention matmuls).
pub const MATMUL: &str = include_str!("../wgsl/matmul.wgsl");
/// LayerNorm / RMSNorm, one workgroup per row.
pub const NORM: &str = include_str!("../wgsl/norm.wgsl");
/// Softmax over the last dim with broadcast mask, per-head bias, scale and causal masking.
pub const SOFTMAX: &str = include_str!("../wgsl/softmax.wgsl");
/// Activations, scale, add/mul with a repeating operand, dtype casts.
pub const ELEMENTWISE: &str = include_str!("../wgsl/elementwise.wgsl");
/// Box copies (narrow, concat, in-place write), head permutation, im2col.
pub const COPY: &str = include_str!("../wgsl/copy.wgsl");
/// Embedding row gather.
pub const EMBEDDING: &str = include_str!("../wgsl/embedding.wgsl");
/// Fused attention for few queries (decode, Q-Former): scores, online softmax and values
/// in one dispatch per (batch, head, query).
pub const ATTENTION: &str = include_str!("../wgsl/attention.wgsl");

/// Every kernel family, by name (for tests that compile them all).
pub const ALL: &[(&str, &str)] = &[
    ("gemv", GEMV),
    ("matmul", MATMUL),
    ("norm", NORM),
    ("softmax", SOFTMAX),
    ("elementwise", ELEMENTWISE),
    ("copy", COPY),
    ("embedding", EMBEDDING),
    ("attention", ATTENTION),
];

/// Why a specialisation failed (a programming error in the caller: a constant that the
/// source does not declare).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError(pub String);

impl std::fmt::Display for SpecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SpecError {}

/// Produces one variant of `src`: each `(NAME, value)` replaces the initialiser of the
/// module-scope line `const NAME: T = ...;` (the line must exist exactly once), and with
/// `subgroups` the `//SG ` lines are enabled and the `//NOSG` lines disabled.
pub fn specialise(
    src: &str,
    consts: &[(&str, String)],
    subgroups: bool,
) -> Result<String, SpecError> {
    let mut found = vec![0usize; consts.len()];
    let mut out = String::with_capacity(src.len() + 64);
    for line in src.lines() {
        let trimmed = line.trim_start();
        if subgroups {
            if let Some(rest) = trimmed.strip_prefix("//SG ") {
                out.push_str(rest);
                out.push('\n');
                continue;
            }
            if trimmed.trim_end().ends_with("//NOSG") {
                out.push_str("// (subgroup variant) ");
                out.push_str(trimmed);
                out.push('\n');
                continue;
            }
        }
        let mut replaced = false;
        if let Some(rest) = trimmed.strip_prefix("const ") {
            for (i, (name, value)) in consts.iter().enumerate() {
                if let Some(after) = rest.strip_prefix(name)
                    && after.starts_with(':')
                {
                    let ty_end = after.find('=').ok_or_else(|| {
                        SpecError(format!("const {name} has no initialiser: {line}"))
                    })?;
                    let ty = after[1..ty_end].trim();
                    out.push_str(&format!("const {name}: {ty} = {value};\n"));
                    found[i] += 1;
                    replaced = true;
                    break;
                }
            }
        }
        if !replaced {
            out.push_str(line);
            out.push('\n');
        }
    }
    for (i, (name, _)) in consts.iter().enumerate() {
        if found[i] != 1 {
            return Err(SpecError(format!(
                "const {name} declared {} times in the kernel source (expected once)",
                found[i]
            )));
        }
    }
    Ok(out)
}

/// WGSL literal for a bool constant.
pub fn wgsl_bool(b: bool) -> String {
    if b { "true".into() } else { "false".into() }
}

/// WGSL literal for a u32 constant.
pub fn wgsl_u32(v: u32) -> String {
    format!("{v}u")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specialise_replaces_constants_once() {
        let src = "const A: u32 = 1u;\nconst AB: bool = false;\nfn f() {}\n";
        let out = specialise(src, &[("A", wgsl_u32(7)), ("AB", wgsl_bool(true))], false).unwrap();
        assert!(out.contains("const A: u32 = 7u;"));
        assert!(out.contains("const AB: bool = true;"));
        assert!(specialise(src, &[("C", wgsl_u32(1))], false).is_err());
    }

    #[test]
    fn specialise_toggles_subgroup_lines() {
        let src = "  x = 1; //NOSG\n  //SG x = subgroupAdd(1);\n";
        let plain = specialise(src, &[], false).unwrap();
        assert_eq!(plain, src);
        let sg = specialise(src, &[], true).unwrap();
        assert!(sg.contains("x = subgroupAdd(1);"));
        assert!(sg.contains("// (subgroup variant) x = 1; //NOSG"));
    }

    #[test]
    fn every_kernel_declares_params_first() {
        for (name, src) in ALL {
            assert!(
                src.contains("@group(0) @binding(0) var<uniform> p: Params;"),
                "{name} must bind its Params at binding 0"
            );
        }
    }
}
