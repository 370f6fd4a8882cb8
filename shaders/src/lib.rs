//! WGSL sources of the blip2 GPU kernels, one file per kernel family, the typed contract
//! between them and the engine, and the specialisation step that turns a source into one
//! pipeline variant.
//!
//! # The contract, declared once on the Rust side
//! Each kernel family has, in this crate (see [`Kernel`]):
//! - a consts struct ([`GemvConsts`], [`MatmulConsts`], ...): its specialisation constants as
//!   typed fields, plus `subgroups` where the kernel has a subgroup variant. A value of it *is*
//!   a pipeline variant: the engine dispatches it and caches pipelines keyed by it (it derives
//!   `Hash`/`Eq`), and [`Kernel::constants`] is the only place that names the WGSL constants.
//!   [`Kernel::variants`] lists every variant the engine can build; the tests validate each.
//! - a `#[repr(C)]` [`Params`] struct ([`GemvParams`], ...) that mirrors the WGSL
//!   `struct Params` field by field; a test compares names, types and size with the WGSL.
//! - its binding signature ([`Kernel::READ_ONLY`], [`Kernel::READ_WRITE`]), checked against
//!   the WGSL declarations by a test.
//! - op-code enums ([`ElementwiseOp`], [`CopyMode`]) where a constant selects an operation.
//!   The WGSL names each code too (`const OP_GELU: u32 = 0u;`) and switches on the names; a
//!   test checks every enum discriminant against the WGSL constant of the same name.
//!
//! # Conventions shared by every kernel (the engine's GPU runtime relies on them)
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
//!   comments out. (naga 30 rejects `enable subgroups;` as not yet implemented and accepts
//!   the subgroup builtins when the device has the `SUBGROUP` feature, so no directive is
//!   emitted.)
//! - f16 arithmetic (when the adapter has `SHADER_F16`; [`Kernel::f16_math`]) works the same
//!   way: lines starting `//H ` hold the f16 code, lines ending `//NOH` the packed-pair code
//!   it replaces, and [`specialise_toggled`] also puts `enable f16;` first. The f16 variants
//!   (gemv, matmul) read f16 operands as `vec4<f16>` bindings, multiply in f16 and sum at
//!   most 8 products in f16 before an f32 accumulator takes them (see each kernel's top).
//! - Helpers shared by several kernels live once, in fragments under `wgsl/include/`
//!   ([`INCLUDES`]): a kernel line `// #include "pack.wgsl"` is replaced by the fragment's
//!   text before anything else (a comment line, so no other tool mistakes it for code).
//!   `pack.wgsl` has the f16/f32 word loads and the pair store, `act.wgsl` the activations, `reduce.wgsl` the workgroup
//!   and subgroup sum/max reductions, `quant.wgsl` the q8/q4 dequantization, `gemv_fusion.wgsl` the GEMVs' fused-decode
//!   norm prologue and epilogue, `exclude.wgsl` the token-choice kernels' excluded ids; each documents at its top what it needs from the
//!   including kernel. A kernel that includes fragments is valid WGSL once they are pasted
//!   in (its default constants are then a valid variant); `copy.wgsl` includes none.

mod kernels;

pub use kernels::*;

/// Largest `Params` struct of any kernel, in bytes (the uniform binding size).
pub const PARAMS_BYTES: u64 = 128;

/// Matrix-vector product for linear layers with 1..=4 rows of x (decode).
pub const GEMV: &str = include_str!("../wgsl/gemv.wgsl");
/// Tiled, register-blocked batched matmul (linear with M > 4, attention matmuls).
pub const MATMUL: &str = include_str!("../wgsl/matmul.wgsl");
/// GEMV with a block-quantized (q8 / q4) weight, dequantized in registers (decode).
pub const QGEMV: &str = include_str!("../wgsl/qgemv.wgsl");
/// Tiled matmul with a block-quantized weight, dequantized into workgroup memory (M > 4).
pub const QMATMUL: &str = include_str!("../wgsl/qmatmul.wgsl");
/// LayerNorm / RMSNorm, one workgroup per row.
pub const NORM: &str = include_str!("../wgsl/norm.wgsl");
/// Softmax over the last dim with broadcast mask, per-head bias, scale and causal masking.
pub const SOFTMAX: &str = include_str!("../wgsl/softmax.wgsl");
/// Activations, scale, add/mul with a repeating operand, dtype casts.
pub const ELEMENTWISE: &str = include_str!("../wgsl/elementwise.wgsl");
/// Box copies (narrow, concat, in-place write, row gathers), head permutation, im2col.
pub const COPY: &str = include_str!("../wgsl/copy.wgsl");
/// Embedding row gather.
pub const EMBEDDING: &str = include_str!("../wgsl/embedding.wgsl");
/// Embedding row gather from a block-quantized (q8 / q4) table.
pub const QEMBEDDING: &str = include_str!("../wgsl/qembedding.wgsl");
/// Fused attention for few queries (decode, Q-Former): scores, online softmax and values
/// in one dispatch per (batch, head, query).
pub const ATTENTION: &str = include_str!("../wgsl/attention.wgsl");
/// Flash-style attention for many queries (ViT, prefill): K/V tiles in workgroup memory,
/// online softmax, no score matrix in global memory.
pub const FLASH_ATTENTION: &str = include_str!("../wgsl/flash_attention.wgsl");
/// Tensor-core (cooperative-matrix) linear layer for adapters with wgpu's experimental
/// cooperative-matrix feature; specialised per weight width ([`CoopMatmulConsts`]).
pub const COOP_MATMUL: &str = include_str!("../wgsl/coop_matmul.wgsl");
/// Decode attention of one new token with its K/V appended to the cache in the same pass.
pub const ATTENTION_DECODE: &str = include_str!("../wgsl/attention_decode.wgsl");
/// Greedy token choice per row (first maximum), so a decode step reads back ids, not logits.
pub const ARGMAX: &str = include_str!("../wgsl/argmax.wgsl");
/// Top-k candidates per row (radix select), so top-k sampling reads back ~k entries a row.
pub const TOPK: &str = include_str!("../wgsl/topk.wgsl");

/// Every kernel family, by name (for tests that look at all sources).
pub const ALL: &[(&str, &str)] = &[
    (GemvConsts::NAME, GEMV),
    (MatmulConsts::NAME, MATMUL),
    (QGemvConsts::NAME, QGEMV),
    (QMatmulConsts::NAME, QMATMUL),
    (NormConsts::NAME, NORM),
    (SoftmaxConsts::NAME, SOFTMAX),
    (ElementwiseConsts::NAME, ELEMENTWISE),
    (CopyConsts::NAME, COPY),
    (EmbeddingConsts::NAME, EMBEDDING),
    (QEmbeddingConsts::NAME, QEMBEDDING),
    (AttentionConsts::NAME, ATTENTION),
    (FlashAttentionConsts::NAME, FLASH_ATTENTION),
    (CoopMatmulConsts::NAME, COOP_MATMUL),
    (AttnDecodeConsts::NAME, ATTENTION_DECODE),
    (ArgmaxConsts::NAME, ARGMAX),
    (TopkConsts::NAME, TOPK),
];

/// Shared WGSL fragments (not kernels on their own), by the name kernels include them with.
pub const INCLUDES: &[(&str, &str)] = &[
    ("pack.wgsl", include_str!("../wgsl/include/pack.wgsl")),
    ("reduce.wgsl", include_str!("../wgsl/include/reduce.wgsl")),
    ("quant.wgsl", include_str!("../wgsl/include/quant.wgsl")),
    ("act.wgsl", include_str!("../wgsl/include/act.wgsl")),
    (
        "gemv_fusion.wgsl",
        include_str!("../wgsl/include/gemv_fusion.wgsl"),
    ),
    ("exclude.wgsl", include_str!("../wgsl/include/exclude.wgsl")),
];

/// One kernel family's side of the contract; a value is one pipeline variant.
pub trait Kernel: Copy + Eq + std::hash::Hash + std::fmt::Debug + Send + Sync + 'static {
    /// Family name, for pipeline labels, messages and dumped file names.
    const NAME: &'static str;
    /// The stored source (`// #include` lines not yet resolved).
    const SOURCE: &'static str;
    /// Read-only storage bindings, at bindings 1..=READ_ONLY.
    const READ_ONLY: usize;
    /// Read-write storage bindings, after the read-only ones.
    const READ_WRITE: usize;
    /// The uniform at binding 0.
    type Params: Params;

    /// This variant's module-scope constants, by WGSL name. Called when a pipeline is
    /// compiled, never per dispatch.
    fn constants(&self) -> Vec<(&'static str, ConstValue)>;

    /// Whether this variant enables the `//SG` lines (always false without a subgroup
    /// variant).
    fn subgroups(&self) -> bool {
        false
    }

    /// Whether this variant computes in f16 (`//H` lines, `enable f16;`; needs the
    /// adapter's `SHADER_F16`). Always false without an f16 variant.
    fn f16_math(&self) -> bool {
        false
    }

    /// Every variant the engine can build (each is validated by the tests).
    fn variants() -> Vec<Self>;

    /// Op codes the source declares as named WGSL constants: (name, value).
    fn op_codes() -> Vec<(&'static str, u32)> {
        Vec::new()
    }

    /// The WGSL of this variant: fragments included, constants set, subgroup lines toggled.
    fn wgsl(&self) -> Result<String, SpecError> {
        let consts: Vec<(&str, String)> = self
            .constants()
            .into_iter()
            .map(|(n, v)| (n, v.to_string()))
            .collect();
        let t = Toggles {
            subgroups: self.subgroups(),
            f16: self.f16_math(),
        };
        specialise_toggled(Self::SOURCE, &consts, t)
    }

    /// "family NAME=value ... [+subgroups] [+f16]", for messages and dumped file names.
    fn label(&self) -> String {
        let mut k = String::from(Self::NAME);
        for (n, v) in self.constants() {
            k.push_str(&format!(" {n}={v}"));
        }
        if self.subgroups() {
            k.push_str(" +subgroups");
        }
        if self.f16_math() {
            k.push_str(" +f16");
        }
        k
    }
}

/// A kernel's uniform block: `#[repr(C)]` 4-byte scalars in the order of the WGSL
/// `struct Params`, uploaded as its bytes.
pub trait Params: bytemuck::Pod + std::fmt::Debug {
    /// (field name, WGSL scalar type) in declaration order; the tests compare it with the
    /// WGSL struct.
    const FIELDS: &'static [(&'static str, &'static str)];
}

/// A specialisation constant's value.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ConstValue {
    Bool(bool),
    U32(u32),
}

/// The WGSL literal.
impl std::fmt::Display for ConstValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            ConstValue::Bool(b) => f.write_str(if b { "true" } else { "false" }),
            ConstValue::U32(v) => write!(f, "{v}u"),
        }
    }
}

impl From<bool> for ConstValue {
    fn from(v: bool) -> Self {
        ConstValue::Bool(v)
    }
}

impl From<u32> for ConstValue {
    fn from(v: u32) -> Self {
        ConstValue::U32(v)
    }
}

/// Why a specialisation failed (a programming error in the caller: a constant that the
/// source does not declare, or an unknown fragment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError(pub String);

impl std::fmt::Display for SpecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SpecError {}

/// The fragment a line `// #include "NAME"` asks for, if it is such a line.
fn include_name(line: &str) -> Option<&str> {
    line.trim()
        .strip_prefix("// #include \"")?
        .strip_suffix('"')
}

/// `src` with every `// #include "NAME"` line replaced by the fragment [`INCLUDES`] names
/// (fragments include nothing themselves).
pub fn resolve_includes(src: &str) -> Result<String, SpecError> {
    let mut out = String::with_capacity(src.len() + 4096);
    for line in src.lines() {
        push_line(&mut out, line, Toggles::default())?;
    }
    Ok(out)
}

/// Appends `line`, or the fragment it includes with its tagged lines toggled, to `out`.
fn push_line(out: &mut String, line: &str, t: Toggles) -> Result<(), SpecError> {
    match include_name(line) {
        Some(name) => {
            let (_, text) = INCLUDES
                .iter()
                .find(|(n, _)| *n == name)
                .ok_or_else(|| SpecError(format!("unknown WGSL fragment \"{name}\"")))?;
            if text.lines().any(|l| include_name(l).is_some()) {
                return Err(SpecError(format!("fragment {name} includes another")));
            }
            out.push_str(&format!("// ---- {name}\n"));
            for l in text.lines() {
                out.push_str(&toggle(l, t));
                out.push('\n');
            }
            out.push_str(&format!("// ---- end of {name}\n"));
        }
        None => {
            out.push_str(line);
            out.push('\n');
        }
    }
    Ok(())
}

/// The optional code paths of a variant that live in tagged source lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Toggles {
    /// Enable the `//SG ` lines and disable the `//NOSG` ones (needs `SUBGROUP`).
    pub subgroups: bool,
    /// f16 arithmetic: enable the `//H ` lines, disable the `//NOH` ones and put
    /// `enable f16;` first (needs `SHADER_F16`).
    pub f16: bool,
}

/// `line` as this variant has it: a tagged line enabled (tag removed) or disabled (commented
/// out), any other line as it is.
fn toggle(line: &str, t: Toggles) -> std::borrow::Cow<'_, str> {
    let trimmed = line.trim_start();
    let end = trimmed.trim_end();
    for (on, tag, off_tag, what) in [
        (t.subgroups, "//SG ", "//NOSG", "subgroup"),
        (t.f16, "//H ", "//NOH", "f16"),
    ] {
        if on {
            if let Some(rest) = trimmed.strip_prefix(tag) {
                return rest.into();
            }
            if end.ends_with(off_tag) {
                return format!("// ({what} variant) {trimmed}").into();
            }
        }
    }
    line.into()
}

/// Produces one variant of `src` with [`specialise_toggled`], f16 lines off.
pub fn specialise(
    src: &str,
    consts: &[(&str, String)],
    subgroups: bool,
) -> Result<String, SpecError> {
    specialise_toggled(
        src,
        consts,
        Toggles {
            subgroups,
            f16: false,
        },
    )
}

/// Produces one variant of `src`: tagged lines are toggled ([`Toggles`]; a kernel line
/// before its include is resolved, so an `//H // #include "x.wgsl"` line includes a fragment
/// only in f16 variants), fragments are included ([`resolve_includes`]), and each
/// `(NAME, value)` replaces the initialiser of the module-scope line `const NAME: T = ...;`
/// (the line must exist exactly once).
pub fn specialise_toggled(
    src: &str,
    consts: &[(&str, String)],
    t: Toggles,
) -> Result<String, SpecError> {
    let mut included = String::with_capacity(src.len() + 4096);
    if t.f16 {
        included.push_str("enable f16;\n");
    }
    for line in src.lines() {
        push_line(&mut included, &toggle(line, t), t)?;
    }
    let mut found = vec![0usize; consts.len()];
    let mut out = String::with_capacity(included.len() + 64);
    for line in included.lines() {
        let trimmed = line.trim_start();
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
    ConstValue::Bool(b).to_string()
}

/// WGSL literal for a u32 constant.
pub fn wgsl_u32(v: u32) -> String {
    ConstValue::U32(v).to_string()
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
    fn specialise_toggles_f16_lines() {
        let src = "  x = f(1.0); //NOH\n  //H x = f32(g(1.0h));\n//H // #include \"pack.wgsl\"\n";
        let plain = specialise_toggled(src, &[], Toggles::default()).unwrap();
        assert_eq!(plain, src);
        let t = Toggles {
            subgroups: false,
            f16: true,
        };
        let h = specialise_toggled(src, &[], t).unwrap();
        assert!(h.starts_with("enable f16;\n"));
        assert!(h.contains("\nx = f32(g(1.0h));"));
        assert!(h.contains("// (f16 variant) x = f(1.0); //NOH"));
        // A tagged include line includes its fragment only when enabled.
        assert!(h.contains("fn st_pair("));
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

    #[test]
    fn includes_paste_fragments_and_reject_unknown_ones() {
        let out = specialise("a\n  // #include \"pack.wgsl\"\nb\n", &[], false).unwrap();
        assert!(out.starts_with("a\n// ---- pack.wgsl\n"));
        assert!(out.contains("fn st_pair("));
        assert!(out.ends_with("// ---- end of pack.wgsl\nb\n"));
        let err = specialise("// #include \"nope.wgsl\"\n", &[], false).unwrap_err();
        assert!(err.0.contains("nope.wgsl"), "{err}");
        // Constants and subgroup lines inside fragments are specialised too.
        let sg = specialise("// #include \"reduce.wgsl\"\n", &[], true).unwrap();
        assert!(sg.contains("subgroupAdd"));
    }

    #[test]
    fn fragments_are_documented_as_fragments() {
        for (name, text) in INCLUDES {
            assert!(
                text.starts_with("// FRAGMENT, not a kernel"),
                "{name} must say at its top that it is a fragment"
            );
        }
    }

    #[test]
    fn params_fit_the_uniform_slot() {
        use std::mem::size_of;
        let sizes = [
            size_of::<GemvParams>(),
            size_of::<MatmulParams>(),
            size_of::<QMatmulParams>(),
            size_of::<NormParams>(),
            size_of::<SoftmaxParams>(),
            size_of::<ElementwiseParams>(),
            size_of::<CopyParams>(),
            size_of::<EmbeddingParams>(),
            size_of::<AttentionParams>(),
            size_of::<ArgmaxParams>(),
            size_of::<TopkParams>(),
        ];
        let largest = sizes.into_iter().max().unwrap_or(0);
        assert!(largest as u64 <= PARAMS_BYTES, "{largest} > {PARAMS_BYTES}");
    }
}
