// Embedding gather: out[r, c] = table[ids[r], c], converted to the output dtype.
// A table larger than one storage binding is bound in row chunks [row0, row0 + rows) and
// gathered with one dispatch per chunk; each dispatch writes only the elements whose id
// falls in its chunk (keeping the other half of an f16 word), so chunks compose.

struct Params {
    // Output elements (ids * d).
    n: u32,
    d: u32,
    row0: u32,
    rows: u32,
    groups_x: u32,
}

const T_F16: bool = false;
const OUT_F16: bool = false;
const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read> table: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<u32>;

// Shared helpers, pasted in by `specialise` (the file is not valid WGSL without them).
// #include "pack.wgsl"

fn ld_t(i: u32) -> f32 {
    return elem(table[word_of(i, T_F16)], i, T_F16);
}

// Table row of output element e, or false when its id is outside this chunk.
fn src_of(e: u32, src: ptr<function, u32>) -> bool {
    let r = e / p.d;
    let id = ids[r];
    if (id < p.row0 || id >= p.row0 + p.rows) {
        return false;
    }
    *src = (id - p.row0) * p.d + (e % p.d);
    return true;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let u = (wid.x + wid.y * p.groups_x) * WG + lid;
    let e0 = u * 2u;
    if (e0 >= p.n) {
        return;
    }
    var s = 0u;
    if (OUT_F16) {
        // The other half is kept as raw bits: it may belong to another chunk's dispatch.
        var word = out[u];
        var hit = false;
        if (src_of(e0, &s)) {
            word = (word & 0xffff0000u) | (pack2x16float(vec2<f32>(ld_t(s), 0.0)) & 0xffffu);
            hit = true;
        }
        if (e0 + 1u < p.n && src_of(e0 + 1u, &s)) {
            word = (word & 0xffffu) | (pack2x16float(vec2<f32>(0.0, ld_t(s))) & 0xffff0000u);
            hit = true;
        }
        if (hit) {
            out[u] = word;
        }
    } else {
        if (src_of(e0, &s)) {
            out[e0] = bitcast<u32>(ld_t(s));
        }
        if (e0 + 1u < p.n && src_of(e0 + 1u, &s)) {
            out[e0 + 1u] = bitcast<u32>(ld_t(s));
        }
    }
}
