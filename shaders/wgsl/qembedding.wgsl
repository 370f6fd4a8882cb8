// Embedding gather from a block-quantized table (q8 / q4, layout: kernels/src/quant.rs):
// out[r, c] = deq(table)[ids[r], c] as f32, exactly the CPU's d * q product. Like
// embedding.wgsl, a table larger than one storage binding is bound in row chunks
// [row0, row0 + rows) (quants and scales each bound from the chunk's first row), one dispatch
// per chunk, each writing only the elements whose id falls in its chunk.

struct Params {
    // Output elements (ids * d).
    n: u32,
    d: u32,
    // Blocks per table row (d / 32 rounded up).
    rb: u32,
    row0: u32,
    rows: u32,
    groups_x: u32,
}

const Q4: bool = false;
const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read> qs: array<u32>;
@group(0) @binding(3) var<storage, read> sc: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<u32>;

// Shared helpers, pasted in by `specialise` (the file is not valid WGSL without them).
// #include "quant.wgsl"

// Column c of chunk row `row`, dequantized.
fn value(row: u32, c: u32) -> f32 {
    let h = row * p.rb + c / 32u;
    let i = c % 32u;
    if (Q4) {
        // Byte i % 16 of the block; values 16.. sit in the high nibbles.
        let byte = h * 16u + (i & 15u);
        let shift = (byte & 3u) * 8u + select(0u, 4u, i >= 16u);
        return block_scale(h) * f32(i32((qs[byte >> 2u] >> shift) & 15u) - 8);
    }
    let byte = h * 32u + i;
    // The byte shifted to the top, then sign-extended by the arithmetic shift.
    let v = bitcast<i32>(qs[byte >> 2u] << (24u - (byte & 3u) * 8u)) >> 24u;
    return block_scale(h) * f32(v);
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let e = (wid.x + wid.y * p.groups_x) * WG + lid;
    if (e >= p.n) {
        return;
    }
    let id = ids[e / p.d];
    if (id < p.row0 || id >= p.row0 + p.rows) {
        return;
    }
    out[e] = bitcast<u32>(value(id - p.row0, e % p.d));
}
