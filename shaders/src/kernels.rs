//! The Rust side of every kernel family: specialisation constants, uniform parameters,
//! binding signature and op codes (see the crate docs for what the tests check).

use crate::{ConstValue, Kernel, Params};

/// Declares a `Params` struct: `#[repr(C)]` plain-old-data whose field list is also kept as
/// names and types, so the tests can compare it with the WGSL struct of the same name.
macro_rules! params {
    ($(#[$meta:meta])* $name:ident { $($(#[$fmeta:meta])* $field:ident: $ty:ident,)* }) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
        pub struct $name {
            $($(#[$fmeta])* pub $field: $ty,)*
        }

        impl Params for $name {
            const FIELDS: &'static [(&'static str, &'static str)] =
                &[$((stringify!($field), stringify!($ty)),)*];
        }

        const _: () = assert!(std::mem::size_of::<$name>() as u64 <= crate::PARAMS_BYTES);
    };
}

/// Declares an op-code enum whose discriminants a kernel switches on; each code is also a
/// named WGSL constant in the kernel source (checked by the tests).
macro_rules! op_codes {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $var:ident = $code:literal => $wgsl:literal,)* }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u32)]
        pub enum $name {
            $($(#[$vmeta])* $var = $code,)*
        }

        impl $name {
            /// Every code, in discriminant order.
            pub const ALL: &'static [$name] = &[$($name::$var,)*];

            /// The value the kernel's constant takes.
            pub const fn code(self) -> u32 {
                self as u32
            }

            /// The WGSL constant that names this code in the kernel source.
            pub const fn wgsl_name(self) -> &'static str {
                match self {
                    $($name::$var => $wgsl,)*
                }
            }

            fn named_codes() -> Vec<(&'static str, u32)> {
                Self::ALL.iter().map(|c| (c.wgsl_name(), c.code())).collect()
            }
        }
    };
}

/// Every assignment of `N` flags.
fn flags<const N: usize>() -> impl Iterator<Item = [bool; N]> {
    (0..1u32 << N).map(|bits| std::array::from_fn(|i| (bits >> i) & 1 == 1))
}

/// An optional operand's storage dtype as the pair of flags a kernel takes (present, f16):
/// the engine never sets the dtype flag of an absent operand.
const OPTIONAL: [(bool, bool); 3] = [(false, false), (true, false), (true, true)];

/// Invocations of a one-workgroup-per-row reduction (norm, softmax).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RowWorkgroup {
    /// For short rows: fewer idle invocations and barrier steps.
    Wg64,
    Wg256,
}

impl RowWorkgroup {
    pub const ALL: [RowWorkgroup; 2] = [RowWorkgroup::Wg64, RowWorkgroup::Wg256];

    pub const fn size(self) -> u32 {
        match self {
            RowWorkgroup::Wg64 => 64,
            RowWorkgroup::Wg256 => 256,
        }
    }
}

// ---------------------------------------------------------------------------------- gemv

params! {
    /// Uniform of gemv.wgsl.
    GemvParams {
        /// Weight rows (outputs) in this chunk.
        n: u32,
        k: u32,
        /// Output row stride (total N).
        ldo: u32,
        /// First output column of this chunk.
        n_off: u32,
        groups_x: u32,
        /// Norm epsilon of the prologue (NORM != 0).
        eps: f32,
    }
}

op_codes! {
    /// Activations of act.wgsl (GEMV epilogues; the elementwise kernel's activations call
    /// the same function).
    Activation {
        /// Exact GELU (erf).
        Gelu = 0 => "ACT_GELU",
        /// GELU with the tanh approximation.
        GeluTanh = 1 => "ACT_GELU_TANH",
        Relu = 2 => "ACT_RELU",
        Silu = 3 => "ACT_SILU",
    }
}

/// Prologue of the GEMV kernels: a norm of each x row applied as x is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GemvNorm {
    None = 0,
    /// LayerNorm with weight and bias (f32).
    Layer = 1,
    /// T5's RMSNorm with weight (f32).
    Rms = 2,
}

/// Epilogue of the GEMV kernels, after the bias and before the residual.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GemvEpilogue {
    None,
    Act(Activation),
    /// Weight rows interleaved (gate, up): out[j] = act(y[2j]) * y[2j + 1].
    Gated(Activation),
}

impl GemvEpilogue {
    fn codes(self) -> (u32, u32) {
        match self {
            GemvEpilogue::None => (0, Activation::Relu.code()),
            GemvEpilogue::Act(a) => (1, a.code()),
            GemvEpilogue::Gated(a) => (2, a.code()),
        }
    }
}

/// The decode fusions of the GEMV kernels: norm prologue, activation/gate epilogue, residual.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GemvFusion {
    pub norm: GemvNorm,
    pub epi: GemvEpilogue,
    pub residual: bool,
}

impl GemvFusion {
    pub const NONE: GemvFusion = GemvFusion {
        norm: GemvNorm::None,
        epi: GemvEpilogue::None,
        residual: false,
    };

    /// The fusions the variant lists hold (what the decoders use: a normed projection, with
    /// an activation or a gate, and a projection plus residual); others run unfused.
    pub fn all() -> Vec<GemvFusion> {
        let mut v = vec![GemvFusion {
            residual: true,
            ..GemvFusion::NONE
        }];
        for norm in [GemvNorm::Layer, GemvNorm::Rms] {
            v.push(GemvFusion {
                norm,
                ..GemvFusion::NONE
            });
            for &a in Activation::ALL {
                for epi in [GemvEpilogue::Act(a), GemvEpilogue::Gated(a)] {
                    v.push(GemvFusion {
                        norm,
                        epi,
                        residual: false,
                    });
                }
            }
        }
        v
    }

    fn constants(&self) -> [(&'static str, ConstValue); 4] {
        let (epi, act) = self.epi.codes();
        [
            ("NORM", (self.norm as u32).into()),
            ("EPI", epi.into()),
            ("ACT", act.into()),
            ("RESIDUAL", self.residual.into()),
        ]
    }
}

/// gemv.wgsl: linear layers with 1..=4 rows of x (decode).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GemvConsts {
    /// Rows of x, 1..=4.
    pub m: u32,
    /// 16-byte loads (K % 8 == 0).
    pub vec: bool,
    pub has_bias: bool,
    pub x_f16: bool,
    pub w_f16: bool,
    pub b_f16: bool,
    pub out_f16: bool,
    pub subgroups: bool,
    /// Decode fusions (variants with fusions: out_f16 == x_f16, bias absent or f32, and
    /// f32 output when gated).
    pub fusion: GemvFusion,
    /// f16 arithmetic (needs `SHADER_F16`; only with `vec` and `w_f16`; an f32 x is rounded
    /// to f16): 8-product runs summed in f16, accumulated in f32 (see gemv.wgsl).
    pub f16_math: bool,
}

impl Kernel for GemvConsts {
    const NAME: &'static str = "gemv";
    const SOURCE: &'static str = crate::GEMV;
    /// x, w, bias, norm weight, norm bias, residual.
    const READ_ONLY: usize = 6;
    const READ_WRITE: usize = 1;
    type Params = GemvParams;

    fn constants(&self) -> Vec<(&'static str, ConstValue)> {
        vec![
            ("M", self.m.into()),
            ("VEC", self.vec.into()),
            ("HAS_BIAS", self.has_bias.into()),
            ("X_F16", self.x_f16.into()),
            ("W_F16", self.w_f16.into()),
            ("B_F16", self.b_f16.into()),
            ("OUT_F16", self.out_f16.into()),
        ]
        .into_iter()
        .chain(self.fusion.constants())
        .collect()
    }

    fn subgroups(&self) -> bool {
        self.subgroups
    }

    fn f16_math(&self) -> bool {
        self.f16_math
    }

    /// The f32 variants, and each VEC one with f16 weights again with f16 arithmetic.
    fn variants() -> Vec<Self> {
        let mut v = Vec::new();
        for m in 1..=4 {
            for (has_bias, b_f16) in OPTIONAL {
                for [vec, x_f16, w_f16, out_f16, subgroups] in flags() {
                    v.push(GemvConsts {
                        m,
                        vec,
                        has_bias,
                        x_f16,
                        w_f16,
                        b_f16,
                        out_f16,
                        subgroups,
                        fusion: GemvFusion::NONE,
                        f16_math: false,
                    });
                }
            }
            for fusion in GemvFusion::all() {
                for has_bias in [false, true] {
                    for [vec, x_f16, w_f16, subgroups] in flags() {
                        if x_f16 && matches!(fusion.epi, GemvEpilogue::Gated(_)) {
                            continue;
                        }
                        v.push(GemvConsts {
                            m,
                            vec,
                            has_bias,
                            x_f16,
                            w_f16,
                            b_f16: false,
                            out_f16: x_f16,
                            subgroups,
                            fusion,
                            f16_math: false,
                        });
                    }
                }
            }
        }
        let f16: Vec<Self> = v
            .iter()
            .filter(|k| k.vec && k.w_f16)
            .map(|k| GemvConsts {
                f16_math: true,
                ..*k
            })
            .collect();
        v.extend(f16);
        v
    }

    fn op_codes() -> Vec<(&'static str, u32)> {
        Activation::named_codes()
    }
}

// -------------------------------------------------------------------------------- matmul

params! {
    /// Uniform of matmul.wgsl; strides and batch strides in elements.
    MatmulParams {
        m: u32,
        /// Columns of C in this dispatch (rows of a weight chunk with B_TRANS).
        n: u32,
        k: u32,
        lda: u32,
        ldb: u32,
        ldc: u32,
        /// First column of C (and of the bias) of this chunk.
        n_off: u32,
        a_bs: u32,
        b_bs: u32,
        c_bs: u32,
    }
}

/// Tile shape of the matmul kernels: TM rows x 64 columns of C per workgroup, RM x 4 of them
/// per invocation. Chosen by M ([`MatmulTile::for_rows`]), as ggml's small/medium/large.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MatmulTile {
    /// 16 rows, 64 invocations: batched decode steps (M <= 16), where 32-row tiles would
    /// idle half their work.
    M16,
    /// 32 rows, 128 invocations: M <= 32 (the Q-Former's 32 queries).
    M32,
    /// 64 rows, 256 invocations.
    M64,
    /// 128 rows, 256 invocations with 8 x 4 blocks: large M (vision, prefill), where each
    /// B value staged in workgroup memory serves twice the rows.
    M128,
}

impl MatmulTile {
    pub const ALL: [MatmulTile; 4] = [
        MatmulTile::M16,
        MatmulTile::M32,
        MatmulTile::M64,
        MatmulTile::M128,
    ];

    /// The tile for `m` rows of C.
    pub const fn for_rows(m: usize) -> MatmulTile {
        if m <= 16 {
            MatmulTile::M16
        } else if m <= 32 {
            MatmulTile::M32
        } else if m < LARGE_TILE_ROWS {
            MatmulTile::M64
        } else {
            MatmulTile::M128
        }
    }

    /// Rows of C per workgroup.
    pub const fn tm(self) -> u32 {
        self.rm() * self.wg() / 16
    }

    /// Rows of C per invocation.
    pub const fn rm(self) -> u32 {
        match self {
            MatmulTile::M128 => 8,
            _ => 4,
        }
    }

    /// Invocations per workgroup.
    pub const fn wg(self) -> u32 {
        match self {
            MatmulTile::M16 => 64,
            MatmulTile::M32 => 128,
            MatmulTile::M64 | MatmulTile::M128 => 256,
        }
    }
}

/// M from which [`MatmulTile::M128`] is chosen.
pub const LARGE_TILE_ROWS: usize = 256;

/// matmul.wgsl: tiled batched matmul (linear with M > 4, attention matmuls).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MatmulConsts {
    pub tile: MatmulTile,
    /// B is [N, K] (nn.Linear weights, k of q.k^T).
    pub b_trans: bool,
    pub has_bias: bool,
    /// Rows of A (B) hold a multiple of 4 elements: vector tile loads.
    pub a_vec: bool,
    pub b_vec: bool,
    pub a_f16: bool,
    pub b_f16: bool,
    pub bias_f16: bool,
    pub out_f16: bool,
    /// f16 arithmetic (needs `SHADER_F16`; only with `b_f16`; an f32 A is rounded to f16):
    /// f16 tiles, 8-product runs summed in f16, accumulated in f32 (see matmul.wgsl).
    pub f16_math: bool,
}

impl Kernel for MatmulConsts {
    const NAME: &'static str = "matmul";
    const SOURCE: &'static str = crate::MATMUL;
    /// a, b, bias.
    const READ_ONLY: usize = 3;
    const READ_WRITE: usize = 1;
    type Params = MatmulParams;

    fn constants(&self) -> Vec<(&'static str, ConstValue)> {
        vec![
            ("TM", self.tile.tm().into()),
            ("RM", self.tile.rm().into()),
            ("WG", self.tile.wg().into()),
            ("B_TRANS", self.b_trans.into()),
            ("HAS_BIAS", self.has_bias.into()),
            ("A_VEC", self.a_vec.into()),
            ("B_VEC", self.b_vec.into()),
            ("A_F16", self.a_f16.into()),
            ("B_F16", self.b_f16.into()),
            ("BIAS_F16", self.bias_f16.into()),
            ("OUT_F16", self.out_f16.into()),
        ]
    }

    fn f16_math(&self) -> bool {
        self.f16_math
    }

    /// The f32 variants, and each one with f16 B again with f16 arithmetic.
    fn variants() -> Vec<Self> {
        let mut v = Vec::new();
        for tile in MatmulTile::ALL {
            for (has_bias, bias_f16) in OPTIONAL {
                for [b_trans, a_vec, b_vec, a_f16, b_f16, out_f16] in flags() {
                    v.push(MatmulConsts {
                        tile,
                        b_trans,
                        has_bias,
                        a_vec,
                        b_vec,
                        a_f16,
                        b_f16,
                        bias_f16,
                        out_f16,
                        f16_math: false,
                    });
                }
            }
        }
        let f16: Vec<Self> = v
            .iter()
            .filter(|k| k.b_f16)
            .map(|k| MatmulConsts {
                f16_math: true,
                ..*k
            })
            .collect();
        v.extend(f16);
        v
    }
}

// -------------------------------------------------------------------- quantized linear

/// qgemv.wgsl: linear layers with a q8/q4 weight and 1..=4 rows of x (decode). Its uniform
/// is [`GemvParams`] (same fields and meaning as gemv.wgsl's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct QGemvConsts {
    /// Rows of x, 1..=4.
    pub m: u32,
    /// The weight is q4 (else q8).
    pub q4: bool,
    /// K % 32 == 0: whole blocks, 16-byte x loads.
    pub vec: bool,
    pub has_bias: bool,
    pub x_f16: bool,
    pub b_f16: bool,
    pub out_f16: bool,
    pub subgroups: bool,
    /// Decode fusions, as [`GemvConsts::fusion`].
    pub fusion: GemvFusion,
}

impl Kernel for QGemvConsts {
    const NAME: &'static str = "qgemv";
    const SOURCE: &'static str = crate::QGEMV;
    /// x, quants, scales, bias, norm weight, norm bias, residual.
    const READ_ONLY: usize = 7;
    const READ_WRITE: usize = 1;
    type Params = GemvParams;

    fn constants(&self) -> Vec<(&'static str, ConstValue)> {
        vec![
            ("M", self.m.into()),
            ("Q4", self.q4.into()),
            ("VEC", self.vec.into()),
            ("HAS_BIAS", self.has_bias.into()),
            ("X_F16", self.x_f16.into()),
            ("B_F16", self.b_f16.into()),
            ("OUT_F16", self.out_f16.into()),
        ]
        .into_iter()
        .chain(self.fusion.constants())
        .collect()
    }

    fn subgroups(&self) -> bool {
        self.subgroups
    }

    fn variants() -> Vec<Self> {
        let mut v = Vec::new();
        for m in 1..=4 {
            for (has_bias, b_f16) in OPTIONAL {
                for [q4, vec, x_f16, out_f16, subgroups] in flags() {
                    v.push(QGemvConsts {
                        m,
                        q4,
                        vec,
                        has_bias,
                        x_f16,
                        b_f16,
                        out_f16,
                        subgroups,
                        fusion: GemvFusion::NONE,
                    });
                }
            }
            for fusion in GemvFusion::all() {
                for has_bias in [false, true] {
                    for [q4, vec, x_f16, subgroups] in flags() {
                        if x_f16 && matches!(fusion.epi, GemvEpilogue::Gated(_)) {
                            continue;
                        }
                        v.push(QGemvConsts {
                            m,
                            q4,
                            vec,
                            has_bias,
                            x_f16,
                            b_f16: false,
                            out_f16: x_f16,
                            subgroups,
                            fusion,
                        });
                    }
                }
            }
        }
        v
    }

    fn op_codes() -> Vec<(&'static str, u32)> {
        Activation::named_codes()
    }
}

params! {
    /// Uniform of qmatmul.wgsl (x is contiguous: its row stride is k).
    QMatmulParams {
        m: u32,
        /// Weight rows (output columns) in this chunk.
        n: u32,
        k: u32,
        /// Output row stride (total N).
        ldc: u32,
        /// First output column (and bias element) of this chunk.
        n_off: u32,
    }
}

/// qmatmul.wgsl: tiled linear with a q8/q4 weight (M > 4), the weight dequantized one
/// 32-deep block at a time into workgroup memory. Tiles as [`MatmulTile`] (x 64 columns).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct QMatmulConsts {
    pub tile: MatmulTile,
    /// The weight is q4 (else q8).
    pub q4: bool,
    pub has_bias: bool,
    /// K % 4 == 0: vector loads of x quads.
    pub a_vec: bool,
    pub a_f16: bool,
    pub bias_f16: bool,
    pub out_f16: bool,
}

impl Kernel for QMatmulConsts {
    const NAME: &'static str = "qmatmul";
    const SOURCE: &'static str = crate::QMATMUL;
    /// x, quants, scales, bias.
    const READ_ONLY: usize = 4;
    const READ_WRITE: usize = 1;
    type Params = QMatmulParams;

    fn constants(&self) -> Vec<(&'static str, ConstValue)> {
        vec![
            ("TM", self.tile.tm().into()),
            ("RM", self.tile.rm().into()),
            ("WG", self.tile.wg().into()),
            ("Q4", self.q4.into()),
            ("HAS_BIAS", self.has_bias.into()),
            ("A_VEC", self.a_vec.into()),
            ("A_F16", self.a_f16.into()),
            ("BIAS_F16", self.bias_f16.into()),
            ("OUT_F16", self.out_f16.into()),
        ]
    }

    fn variants() -> Vec<Self> {
        let mut v = Vec::new();
        for tile in MatmulTile::ALL {
            for (has_bias, bias_f16) in OPTIONAL {
                for [q4, a_vec, a_f16, out_f16] in flags() {
                    v.push(QMatmulConsts {
                        tile,
                        q4,
                        has_bias,
                        a_vec,
                        a_f16,
                        bias_f16,
                        out_f16,
                    });
                }
            }
        }
        v
    }
}

// ---------------------------------------------------------------------------------- norm

params! {
    /// Uniform of norm.wgsl.
    NormParams {
        rows: u32,
        d: u32,
        eps: f32,
        groups_x: u32,
    }
}

/// norm.wgsl: LayerNorm (with bias) or RMSNorm (without) over the last dim.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NormConsts {
    pub wg: RowWorkgroup,
    pub rms: bool,
    pub has_bias: bool,
    pub x_f16: bool,
    pub w_f16: bool,
    pub b_f16: bool,
    pub out_f16: bool,
    pub subgroups: bool,
}

impl Kernel for NormConsts {
    const NAME: &'static str = "norm";
    const SOURCE: &'static str = crate::NORM;
    /// x, w, bias.
    const READ_ONLY: usize = 3;
    const READ_WRITE: usize = 1;
    type Params = NormParams;

    fn constants(&self) -> Vec<(&'static str, ConstValue)> {
        vec![
            ("WG", self.wg.size().into()),
            ("RMS", self.rms.into()),
            ("HAS_BIAS", self.has_bias.into()),
            ("X_F16", self.x_f16.into()),
            ("W_F16", self.w_f16.into()),
            ("B_F16", self.b_f16.into()),
            ("OUT_F16", self.out_f16.into()),
        ]
    }

    fn subgroups(&self) -> bool {
        self.subgroups
    }

    fn variants() -> Vec<Self> {
        let mut v = Vec::new();
        for wg in RowWorkgroup::ALL {
            for (has_bias, b_f16) in OPTIONAL {
                for [rms, x_f16, w_f16, out_f16, subgroups] in flags() {
                    v.push(NormConsts {
                        wg,
                        rms,
                        has_bias,
                        x_f16,
                        w_f16,
                        b_f16,
                        out_f16,
                        subgroups,
                    });
                }
            }
        }
        v
    }
}

// ------------------------------------------------------------------------------- softmax

params! {
    /// Uniform of softmax.wgsl: x viewed as [d0, d1, d2, n]; mask (ms*) and bias (bs*)
    /// element strides per dim, 0 where broadcast.
    SoftmaxParams {
        rows: u32,
        n: u32,
        d1: u32,
        d2: u32,
        ms0: u32,
        ms1: u32,
        ms2: u32,
        ms3: u32,
        bs0: u32,
        bs1: u32,
        bs2: u32,
        bs3: u32,
        scale: f32,
        /// 1: entry j of a row with dim-2 index i is excluded when j > i + causal_off.
        causal: u32,
        causal_off: u32,
        groups_x: u32,
    }
}

/// softmax.wgsl: softmax over the last dim with broadcast mask, per-head bias, scale and
/// causal masking; or (`log`) the log-softmax of plain rows into f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SoftmaxConsts {
    pub wg: RowWorkgroup,
    pub has_mask: bool,
    pub has_bias: bool,
    pub x_f16: bool,
    pub out_f16: bool,
    pub subgroups: bool,
    /// Log-softmax (no mask, bias, scale or causal masking; f32 out).
    pub log: bool,
}

impl Kernel for SoftmaxConsts {
    const NAME: &'static str = "softmax";
    const SOURCE: &'static str = crate::SOFTMAX;
    /// x, mask, bias.
    const READ_ONLY: usize = 3;
    const READ_WRITE: usize = 1;
    type Params = SoftmaxParams;

    fn constants(&self) -> Vec<(&'static str, ConstValue)> {
        vec![
            ("WG", self.wg.size().into()),
            ("HAS_MASK", self.has_mask.into()),
            ("HAS_BIAS", self.has_bias.into()),
            ("X_F16", self.x_f16.into()),
            ("OUT_F16", self.out_f16.into()),
            ("LOG", self.log.into()),
        ]
    }

    fn subgroups(&self) -> bool {
        self.subgroups
    }

    fn variants() -> Vec<Self> {
        let mut v = Vec::new();
        for wg in RowWorkgroup::ALL {
            for [has_mask, has_bias, x_f16, out_f16, subgroups] in flags() {
                v.push(SoftmaxConsts {
                    wg,
                    has_mask,
                    has_bias,
                    x_f16,
                    out_f16,
                    subgroups,
                    log: false,
                });
            }
            for [x_f16, subgroups] in flags() {
                v.push(SoftmaxConsts {
                    wg,
                    has_mask: false,
                    has_bias: false,
                    x_f16,
                    out_f16: false,
                    subgroups,
                    log: true,
                });
            }
        }
        v
    }
}

// --------------------------------------------------------------------------- elementwise

params! {
    /// Uniform of elementwise.wgsl.
    ElementwiseParams {
        /// Elements in this dispatch's range (ranges start at an even element).
        n: u32,
        /// Elements of b; element i of the range pairs with b[(b_base + i) % b_len].
        b_len: u32,
        b_base: u32,
        /// Multiplier of the scale op.
        s: f32,
        groups_x: u32,
    }
}

op_codes! {
    /// What elementwise.wgsl computes (its `OP` constant).
    ElementwiseOp {
        /// Exact GELU (erf).
        Gelu = 0 => "OP_GELU",
        /// GELU, tanh approximation.
        GeluTanh = 1 => "OP_GELU_TANH",
        Relu = 2 => "OP_RELU",
        /// x * p.s.
        Scale = 3 => "OP_SCALE",
        /// x + b, b repeating.
        Add = 4 => "OP_ADD",
        /// x * b, b repeating.
        Mul = 5 => "OP_MUL",
        /// x as is: a copy, or a dtype cast.
        Copy = 6 => "OP_COPY",
        /// SiLU: x·σ(x).
        Silu = 7 => "OP_SILU",
    }
}

/// elementwise.wgsl: activations, scale, add/mul with a repeating operand, casts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ElementwiseConsts {
    pub op: ElementwiseOp,
    pub x_f16: bool,
    pub b_f16: bool,
    pub out_f16: bool,
}

impl Kernel for ElementwiseConsts {
    const NAME: &'static str = "elementwise";
    const SOURCE: &'static str = crate::ELEMENTWISE;
    /// x, b.
    const READ_ONLY: usize = 2;
    const READ_WRITE: usize = 1;
    type Params = ElementwiseParams;

    fn constants(&self) -> Vec<(&'static str, ConstValue)> {
        vec![
            ("OP", self.op.code().into()),
            ("X_F16", self.x_f16.into()),
            ("B_F16", self.b_f16.into()),
            ("OUT_F16", self.out_f16.into()),
        ]
    }

    fn variants() -> Vec<Self> {
        let mut v = Vec::new();
        for &op in ElementwiseOp::ALL {
            for [x_f16, b_f16, out_f16] in flags() {
                v.push(ElementwiseConsts {
                    op,
                    x_f16,
                    b_f16,
                    out_f16,
                });
            }
        }
        v
    }

    fn op_codes() -> Vec<(&'static str, u32)> {
        ElementwiseOp::named_codes()
    }
}

// ---------------------------------------------------------------------------------- copy

params! {
    /// Uniform of copy.wgsl; a0..a3 are the mode's arguments (see the kernel).
    CopyParams {
        /// Box: invocations per outer row; other modes: output elements.
        units: u32,
        rows: u32,
        len: u32,
        a0: u32,
        a1: u32,
        a2: u32,
        a3: u32,
        groups_x: u32,
    }
}

op_codes! {
    /// What copy.wgsl moves (its `MODE` constant).
    CopyMode {
        /// dst[o * a0 + a1 + l] = src[o * a2 + a3 + l] for o < rows, l < len.
        Box = 0 => "MODE_BOX",
        /// [B, A, C, D] -> [B, C, A, D].
        Permute0213 = 1 => "MODE_PERMUTE_0213",
        /// [B, C, H, W] -> patches [B, (H/P)(W/P), C*P*P].
        Im2col = 2 => "MODE_IM2COL",
    }
}

/// copy.wgsl: data movement without arithmetic (f16 halves moved as bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CopyConsts {
    pub mode: CopyMode,
    pub f16: bool,
}

impl Kernel for CopyConsts {
    const NAME: &'static str = "copy";
    const SOURCE: &'static str = crate::COPY;
    /// src.
    const READ_ONLY: usize = 1;
    const READ_WRITE: usize = 1;
    type Params = CopyParams;

    fn constants(&self) -> Vec<(&'static str, ConstValue)> {
        vec![("MODE", self.mode.code().into()), ("F16", self.f16.into())]
    }

    fn variants() -> Vec<Self> {
        let mut v = Vec::new();
        for &mode in CopyMode::ALL {
            for [f16] in flags() {
                v.push(CopyConsts { mode, f16 });
            }
        }
        v
    }

    fn op_codes() -> Vec<(&'static str, u32)> {
        CopyMode::named_codes()
    }
}

// ----------------------------------------------------------------------------- embedding

params! {
    /// Uniform of embedding.wgsl.
    EmbeddingParams {
        /// Output elements (ids * d).
        n: u32,
        d: u32,
        /// Table rows [row0, row0 + rows) bound in this dispatch.
        row0: u32,
        rows: u32,
        groups_x: u32,
    }
}

/// embedding.wgsl: rows of a table picked by ids, converted to the output dtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EmbeddingConsts {
    pub t_f16: bool,
    pub out_f16: bool,
}

impl Kernel for EmbeddingConsts {
    const NAME: &'static str = "embedding";
    const SOURCE: &'static str = crate::EMBEDDING;
    /// ids, table.
    const READ_ONLY: usize = 2;
    const READ_WRITE: usize = 1;
    type Params = EmbeddingParams;

    fn constants(&self) -> Vec<(&'static str, ConstValue)> {
        vec![
            ("T_F16", self.t_f16.into()),
            ("OUT_F16", self.out_f16.into()),
        ]
    }

    fn variants() -> Vec<Self> {
        flags()
            .map(|[t_f16, out_f16]| EmbeddingConsts { t_f16, out_f16 })
            .collect()
    }
}

params! {
    /// Uniform of qembedding.wgsl.
    QEmbeddingParams {
        /// Output elements (ids * d).
        n: u32,
        d: u32,
        /// Blocks per table row.
        rb: u32,
        /// Table rows [row0, row0 + rows) bound in this dispatch.
        row0: u32,
        rows: u32,
        groups_x: u32,
    }
}

/// qembedding.wgsl: rows of a q8/q4 table picked by ids, dequantized to f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct QEmbeddingConsts {
    /// The table is q4 (else q8).
    pub q4: bool,
}

impl Kernel for QEmbeddingConsts {
    const NAME: &'static str = "qembedding";
    const SOURCE: &'static str = crate::QEMBEDDING;
    /// ids, quants, scales.
    const READ_ONLY: usize = 3;
    const READ_WRITE: usize = 1;
    type Params = QEmbeddingParams;

    fn constants(&self) -> Vec<(&'static str, ConstValue)> {
        vec![("Q4", self.q4.into())]
    }

    fn variants() -> Vec<Self> {
        flags().map(|[q4]| QEmbeddingConsts { q4 }).collect()
    }
}

// ----------------------------------------------------------------------------- attention

params! {
    /// Uniform of attention.wgsl and flash_attention.wgsl.
    AttentionParams {
        lq: u32,
        lk: u32,
        lk_cap: u32,
        d: u32,
        heads: u32,
        /// attention.wgsl: batch * heads * lq (one workgroup each); flash_attention.wgsl:
        /// batch * heads (each split into tiles of queries).
        rows: u32,
        scale: f32,
        causal: u32,
        causal_off: u32,
        mask_rows: u32,
        groups_x: u32,
    }
}

/// attention.wgsl: fused attention for few queries, one workgroup per (batch, head, query).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AttentionConsts {
    pub qkv_f16: bool,
    pub out_f16: bool,
    pub has_mask: bool,
    pub has_bias: bool,
    /// Head dim is even: rows start on a word, element pairs are read.
    pub d_even: bool,
    pub subgroups: bool,
}

impl Kernel for AttentionConsts {
    const NAME: &'static str = "attention";
    const SOURCE: &'static str = crate::ATTENTION;
    /// q, k, v, mask, bias.
    const READ_ONLY: usize = 5;
    const READ_WRITE: usize = 1;
    type Params = AttentionParams;

    fn constants(&self) -> Vec<(&'static str, ConstValue)> {
        vec![
            ("QKV_F16", self.qkv_f16.into()),
            ("OUT_F16", self.out_f16.into()),
            ("HAS_MASK", self.has_mask.into()),
            ("HAS_BIAS", self.has_bias.into()),
            ("D_EVEN", self.d_even.into()),
        ]
    }

    fn subgroups(&self) -> bool {
        self.subgroups
    }

    fn variants() -> Vec<Self> {
        flags()
            .map(
                |[qkv_f16, out_f16, has_mask, has_bias, d_even, subgroups]| AttentionConsts {
                    qkv_f16,
                    out_f16,
                    has_mask,
                    has_bias,
                    d_even,
                    subgroups,
                },
            )
            .collect()
    }
}

/// flash_attention.wgsl: attention for many queries, one workgroup per (batch, head, tile of
/// [`FlashAttentionConsts::BQ`] queries), K/V tiles in workgroup memory, online softmax.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlashAttentionConsts {
    pub qkv_f16: bool,
    pub out_f16: bool,
    pub has_mask: bool,
    pub has_bias: bool,
}

impl FlashAttentionConsts {
    /// Queries per workgroup (the WGSL's `BQ`).
    pub const BQ: usize = 64;
    /// Largest head dim the kernel takes (the WGSL's `DMAX`).
    pub const DMAX: usize = 128;
}

impl Kernel for FlashAttentionConsts {
    const NAME: &'static str = "flash_attention";
    const SOURCE: &'static str = crate::FLASH_ATTENTION;
    /// q, k, v, mask, bias.
    const READ_ONLY: usize = 5;
    const READ_WRITE: usize = 1;
    type Params = AttentionParams;

    fn constants(&self) -> Vec<(&'static str, ConstValue)> {
        vec![
            ("QKV_F16", self.qkv_f16.into()),
            ("OUT_F16", self.out_f16.into()),
            ("HAS_MASK", self.has_mask.into()),
            ("HAS_BIAS", self.has_bias.into()),
        ]
    }

    fn variants() -> Vec<Self> {
        flags()
            .map(
                |[qkv_f16, out_f16, has_mask, has_bias]| FlashAttentionConsts {
                    qkv_f16,
                    out_f16,
                    has_mask,
                    has_bias,
                },
            )
            .collect()
    }
}

// ------------------------------------------------------------------------ decode attention

params! {
    /// Uniform of attention_decode.wgsl.
    AttnDecodeParams {
        lk: u32,
        lk_cap: u32,
        d: u32,
        heads: u32,
        /// batch * heads (one workgroup each).
        rows: u32,
        scale: f32,
        /// Cache column of the new token (lk - 1).
        pos: u32,
        /// Elements per row of qkv (3 * hidden).
        ld_qkv: u32,
        hidden: u32,
        groups_x: u32,
    }
}

/// attention_decode.wgsl: one new token's attention over a KV cache, its K/V appended to
/// the cache in the same pass, reading q/k/v from a fused projection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AttnDecodeConsts {
    /// qkv, caches and output are f16 (else f32).
    pub f16: bool,
    pub has_mask: bool,
    pub has_bias: bool,
    pub d_even: bool,
    pub subgroups: bool,
}

impl AttnDecodeConsts {
    /// Largest head dim.
    pub const DMAX: usize = 512;
}

impl Kernel for AttnDecodeConsts {
    const NAME: &'static str = "attention_decode";
    const SOURCE: &'static str = crate::ATTENTION_DECODE;
    /// qkv, mask, bias.
    const READ_ONLY: usize = 3;
    /// k cache, v cache, out.
    const READ_WRITE: usize = 3;
    type Params = AttnDecodeParams;

    fn constants(&self) -> Vec<(&'static str, ConstValue)> {
        vec![
            ("QKV_F16", self.f16.into()),
            ("HAS_MASK", self.has_mask.into()),
            ("HAS_BIAS", self.has_bias.into()),
            ("D_EVEN", self.d_even.into()),
        ]
    }

    fn subgroups(&self) -> bool {
        self.subgroups
    }

    fn variants() -> Vec<Self> {
        flags()
            .filter(|[f16, _, _, d_even, _]| !*f16 || *d_even)
            .map(
                |[f16, has_mask, has_bias, d_even, subgroups]| AttnDecodeConsts {
                    f16,
                    has_mask,
                    has_bias,
                    d_even,
                    subgroups,
                },
            )
            .collect()
    }
}

// ---------------------------------------------------------------------------------- argmax

params! {
    /// Uniform of argmax.wgsl.
    ArgmaxParams {
        /// Row length (vocabulary).
        n: u32,
        rows: u32,
        /// Excluded ids in e0..e3 (at most 4).
        n_excl: u32,
        e0: u32,
        e1: u32,
        e2: u32,
        e3: u32,
        groups_x: u32,
    }
}

/// argmax.wgsl: greedy token choice per row (first maximum, ids excluded), with the row's
/// non-finite count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ArgmaxConsts {
    pub x_f16: bool,
}

impl ArgmaxConsts {
    /// Most excluded ids one dispatch takes.
    pub const MAX_EXCLUDED: usize = 4;
}

impl Kernel for ArgmaxConsts {
    const NAME: &'static str = "argmax";
    const SOURCE: &'static str = crate::ARGMAX;
    /// x.
    const READ_ONLY: usize = 1;
    /// (index, non-finite count) per row.
    const READ_WRITE: usize = 1;
    type Params = ArgmaxParams;

    fn constants(&self) -> Vec<(&'static str, ConstValue)> {
        vec![("X_F16", self.x_f16.into())]
    }

    fn variants() -> Vec<Self> {
        vec![ArgmaxConsts { x_f16: false }, ArgmaxConsts { x_f16: true }]
    }
}

// ------------------------------------------------------------------------------- top-k

params! {
    /// Uniform of topk.wgsl.
    TopkParams {
        /// Row length (vocabulary).
        n: u32,
        rows: u32,
        /// Rank of the threshold value (>= 1).
        k: u32,
        /// (id, bits) pairs a row's output slot holds; the slot is 2 + 2 * max_out words.
        max_out: u32,
        /// Excluded ids in e0..e3 (at most 4).
        n_excl: u32,
        e0: u32,
        e1: u32,
        e2: u32,
        e3: u32,
        groups_x: u32,
    }
}

/// topk.wgsl: per row, every finite non-excluded entry >= the k-th largest (radix select
/// over order-preserving keys), with the row's non-finite count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TopkConsts {
    pub x_f16: bool,
}

impl TopkConsts {
    /// Most excluded ids one dispatch takes.
    pub const MAX_EXCLUDED: usize = 4;
}

impl Kernel for TopkConsts {
    const NAME: &'static str = "topk";
    const SOURCE: &'static str = crate::TOPK;
    /// x.
    const READ_ONLY: usize = 1;
    /// [count, non-finite count, (id, bits) x max_out] per row.
    const READ_WRITE: usize = 1;
    type Params = TopkParams;

    fn constants(&self) -> Vec<(&'static str, ConstValue)> {
        vec![("X_F16", self.x_f16.into())]
    }

    fn variants() -> Vec<Self> {
        vec![TopkConsts { x_f16: false }, TopkConsts { x_f16: true }]
    }
}

// ------------------------------------------------------------------ cooperative matmul

params! {
    /// Uniform of coop_matmul.wgsl.
    CoopMatmulParams {
        /// Rows of x and out.
        m: u32,
        /// Weight rows (outputs) in this chunk of w.
        n: u32,
        /// Output row stride (total N).
        ldo: u32,
        /// First output column of this chunk.
        n_off: u32,
        /// Workgroups along n in the dispatch's x extent.
        groups_x: u32,
    }
}

/// Specialisation of coop_matmul.wgsl: a tensor-core linear layer over f16 weights (16×16×16
/// cooperative matrices, f16 products, f32 accumulation). Unlike the other families it is
/// specialised per weight width `k` (naga needs the cooperative loads' stride, K, at compile
/// time) and per subgroup size `sg` (one workgroup is one subgroup).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CoopMatmulConsts {
    /// Weight row length K, a multiple of 16.
    pub k: u32,
    /// The adapter's (fixed) subgroup size: the workgroup size.
    pub sg: u32,
    pub has_bias: bool,
    pub x_f16: bool,
    pub b_f16: bool,
    pub out_f16: bool,
}

impl CoopMatmulConsts {
    /// 16×16 tiles per workgroup along m and along n.
    pub const TILES: u32 = 2;
    /// Output rows and columns per workgroup.
    pub const BLOCK: u32 = 16 * Self::TILES;
}

impl Kernel for CoopMatmulConsts {
    const NAME: &'static str = "coop_matmul";
    const SOURCE: &'static str = crate::COOP_MATMUL;
    /// x, w, bias.
    const READ_ONLY: usize = 3;
    const READ_WRITE: usize = 1;
    type Params = CoopMatmulParams;

    fn constants(&self) -> Vec<(&'static str, ConstValue)> {
        vec![
            ("K", self.k.into()),
            ("SG", self.sg.into()),
            ("TM", Self::TILES.into()),
            ("TN", Self::TILES.into()),
            ("HAS_BIAS", self.has_bias.into()),
            ("X_F16", self.x_f16.into()),
            ("B_F16", self.b_f16.into()),
            ("OUT_F16", self.out_f16.into()),
        ]
    }

    /// K is open-ended, so the list covers the BLIP-2 widths (ViT-g 1408 and 6144, Q-Former
    /// 768 and 3072, OPT-2.7B 2560 and 10240, Flan-T5-XL 2048 and 5120, a 16-wide minimum)
    /// at subgroup sizes 32 and 64, with every dtype flag at one width.
    fn variants() -> Vec<Self> {
        let mut v = Vec::new();
        for (has_bias, b_f16) in OPTIONAL {
            for [x_f16, out_f16] in flags() {
                v.push(CoopMatmulConsts {
                    k: 1408,
                    sg: 32,
                    has_bias,
                    x_f16,
                    b_f16,
                    out_f16,
                });
            }
        }
        for k in [16, 768, 2048, 2560, 3072, 5120, 6144, 10240] {
            for sg in [32, 64] {
                v.push(CoopMatmulConsts {
                    k,
                    sg,
                    has_bias: true,
                    x_f16: false,
                    b_f16: false,
                    out_f16: false,
                });
            }
        }
        v.push(CoopMatmulConsts {
            k: 1408,
            sg: 64,
            has_bias: true,
            x_f16: false,
            b_f16: false,
            out_f16: false,
        });
        v
    }
}
