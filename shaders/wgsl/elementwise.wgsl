// Element-wise kernels: activations, scale, add/mul with a repeating second operand, and
// dtype casts. One invocation handles the element pair (2i, 2i+1), so an f16 output word is
// written by exactly one invocation. Tensors are raw words: f32 bitcast, f16 packed pairs.

struct Params {
    // Elements in this dispatch's range (ranges start at an even element).
    n: u32,
    // Elements of b; element i of the range pairs with b[(b_base + i) % b_len].
    b_len: u32,
    b_base: u32,
    // Multiplier of the scale op.
    s: f32,
    // Workgroups in x of the (folded) 2-D grid.
    groups_x: u32,
}

// Op codes: the discriminants of `blip2_shaders::ElementwiseOp` (a test checks they agree).
const OP_GELU: u32 = 0u;
const OP_GELU_TANH: u32 = 1u;
const OP_RELU: u32 = 2u;
const OP_SCALE: u32 = 3u;
const OP_ADD: u32 = 4u;
const OP_MUL: u32 = 5u;
// Copy / dtype cast.
const OP_COPY: u32 = 6u;
const OP_SILU: u32 = 7u;

const OP: u32 = OP_GELU;
const X_F16: bool = false;
const B_F16: bool = false;
const OUT_F16: bool = false;
const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read> b: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<u32>;

// Shared helpers, pasted in by `specialise` (the file is not valid WGSL without them).
// #include "pack.wgsl"
// #include "act.wgsl"

fn ld_x(i: u32) -> f32 {
    return elem(x[word_of(i, X_F16)], i, X_F16);
}

fn ld_b(i: u32) -> f32 {
    return elem(b[word_of(i, B_F16)], i, B_F16);
}

fn apply(v: f32, i: u32) -> f32 {
    switch (OP) {
        case OP_GELU: {
            return activate(ACT_GELU, v);
        }
        case OP_GELU_TANH: {
            return activate(ACT_GELU_TANH, v);
        }
        case OP_RELU: {
            return activate(ACT_RELU, v);
        }
        case OP_SILU: {
            return activate(ACT_SILU, v);
        }
        case OP_SCALE: {
            return v * p.s;
        }
        case OP_ADD: {
            return v + ld_b((p.b_base + i) % p.b_len);
        }
        case OP_MUL: {
            return v * ld_b((p.b_base + i) % p.b_len);
        }
        default: {
            // OP_COPY
            return v;
        }
    }
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let pair = (wid.x + wid.y * p.groups_x) * WG + lid;
    let i0 = pair * 2u;
    if (i0 >= p.n) {
        return;
    }
    let two = i0 + 1u < p.n;
    let v0 = apply(ld_x(i0), i0);
    var v1 = 0.0;
    if (two) {
        v1 = apply(ld_x(i0 + 1u), i0 + 1u);
    }
    // With an f16 output a lone last element shares its word with the tensor's padding only.
    st_pair(i0, v0, v1, two);
}
