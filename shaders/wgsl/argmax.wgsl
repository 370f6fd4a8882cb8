// Greedy token choice on the device: per row of x [rows, n], the first index of the maximum
// (torch.argmax's tie rule, as the host's `generate::processors::argmax`: NaN and -inf never
// win, a row without a candidate gives 0), with up to four ids excluded (min_new_tokens'
// eos ban: the host sets them to -inf), and the number of non-finite entries of the row
// before exclusion (generation fails on any, as with host logits). One workgroup per row;
// out[2 * row] = index, out[2 * row + 1] = non-finite count: 8 bytes a row to read back.

struct Params {
    n: u32,
    rows: u32,
    n_excl: u32,
    e0: u32,
    e1: u32,
    e2: u32,
    e3: u32,
    groups_x: u32,
}

const X_F16: bool = false;
// pack.wgsl's pair store (unused here) needs it.
const OUT_F16: bool = false;
const WG: u32 = 256u;
const NONE: u32 = 0xffffffffu;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;

var<workgroup> bv: array<f32, WG>;
var<workgroup> bi: array<u32, WG>;
var<workgroup> nf: array<u32, WG>;

// Shared helpers, pasted in by `specialise` (the file is not valid WGSL without them).
// #include "pack.wgsl"

// Shared helper, pasted in by `specialise`.
// #include "exclude.wgsl"

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * p.groups_x;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.n;
    var best = 0.0;
    var idx = NONE;
    var bad = 0u;
    for (var i = lid; i < p.n; i += WG) {
        let v = elem(x[word_of(base + i, X_F16)], base + i, X_F16);
        let bits = bitcast<u32>(v);
        // Exponent all ones: ±inf or NaN.
        let finite = (bits & 0x7f800000u) != 0x7f800000u;
        if (!finite) {
            bad += 1u;
        }
        // Candidates beat -inf strictly (as the host's scan from -inf): finite values and +inf.
        let candidate = finite || bits == 0x7f800000u;
        if (candidate && !excluded(i) && (idx == NONE || v > best)) {
            best = v;
            idx = i;
        }
    }
    bv[lid] = best;
    bi[lid] = idx;
    nf[lid] = bad;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            let j = bi[lid + s];
            let i = bi[lid];
            let w = bv[lid + s];
            if (j != NONE && (i == NONE || w > bv[lid] || (w == bv[lid] && j < i))) {
                bv[lid] = w;
                bi[lid] = j;
            }
            nf[lid] += nf[lid + s];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        out[2u * row] = select(bi[0], 0u, bi[0] == NONE);
        out[2u * row + 1u] = nf[0];
    }
}
