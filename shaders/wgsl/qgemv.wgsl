// GEMV with a block-quantized weight (decode, 1..=4 rows of x): out[m, n_off + n] =
// x[m, :] . deq(w)[n, :] (+ b[n_off + n]). Layout (kernels/src/quant.rs): rows of w cut into
// blocks of 32 along K (the last one zero-padded), one f16 scale per block. q8: 32 i8 per
// block; q4 (Q4): 16 bytes per block, byte i = value i (low nibble) | value i+16 (high), value
// = d * (nibble - 8). Quants are read as u32 words (qs binding) and the scales as f16 pairs
// (sc binding, half h of word h >> 1); both bindings start at chunk row 0.
// Work unit: 8 values of one block (4 units per block). q8: words 2u, 2u+1 = values 8u..8u+8;
// q4: word u = values 4u..4u+4 (low nibbles) and 16+4u..16+4u+4 (high nibbles). Each
// invocation dequantizes its units in registers with integer ops (exact, unlike
// unpack4x8snorm), sums the 8 products in f32 and scales once per unit. Like gemv.wgsl,
// ROWS weight rows per workgroup are streamed once and every x row reuses them; partial sums
// are reduced across the workgroup (subgroups when enabled).
// Fusions (decode): NORM normalises every x row as it is read (1: LayerNorm with weight nw and
// bias nb, 2: RMSNorm with weight nw; statistics in f32 computed by every workgroup, two
// passes as norm.wgsl); EPI applies an activation (1) or a gated activation (2: weight rows
// interleaved gate/up, out[m, j] = act(row 2j) * row 2j+1, output stride ldo / 2) after the
// bias; RESIDUAL adds res (laid out as out) last.
// VEC (K % 32 == 0): every block is full and x rows start on 16 bytes, so x quads are vector
// loads; otherwise x is read element by element, zero past K (the padded quants are 0).

struct Params {
    // Weight rows (outputs) in this chunk.
    n: u32,
    k: u32,
    // Output row stride (total N).
    ldo: u32,
    n_off: u32,
    groups_x: u32,
    // Norm epsilon (NORM != 0).
    eps: f32,
}

const M: u32 = 1u;
const ROWS: u32 = 4u;
const WG: u32 = 128u;
const Q4: bool = false;
const VEC: bool = false;
const HAS_BIAS: bool = false;
const X_F16: bool = false;
const B_F16: bool = false;
const OUT_F16: bool = false;
// 0: none, 1: LayerNorm, 2: RMSNorm of the x rows.
const NORM: u32 = 0u;
// 0: none, 1: activation, 2: gated activation (see the top).
const EPI: u32 = 0u;
// Activation code (act.wgsl) when EPI != 0.
const ACT: u32 = 2u;
const RESIDUAL: bool = false;
const NACC: u32 = ROWS * M;
// Every accumulator is reduced in one pass (reduce.wgsl).
const RED_N: u32 = NACC;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> qs: array<u32>;
@group(0) @binding(3) var<storage, read> sc: array<u32>;
@group(0) @binding(4) var<storage, read> b: array<u32>;
@group(0) @binding(5) var<storage, read> nw: array<f32>;
@group(0) @binding(6) var<storage, read> nb: array<f32>;
@group(0) @binding(7) var<storage, read> res: array<u32>;
@group(0) @binding(8) var<storage, read_write> out: array<u32>;

// Shared helpers, pasted in by `specialise` (the file is not valid WGSL without them).
// #include "pack.wgsl"
// #include "reduce.wgsl"
// #include "quant.wgsl"
// #include "act.wgsl"
// #include "gemv_fusion.wgsl"

fn ld_x1(i: u32) -> f32 {
    let w = word_of(i, X_F16);
    return elem(x[w >> 2u][w & 3u], i, X_F16);
}

fn ld_b(i: u32) -> f32 {
    return elem(b[word_of(i, B_F16)], i, B_F16);
}

// x[base + c .. base + c + 4], zero past K (c < K is a column of row `base / K`).
fn ld_x4(base: u32, c: u32, k: u32) -> vec4<f32> {
    if (VEC) {
        let i = base + c;
        if (X_F16) {
            return halves4(x[i >> 3u], (i & 4u) != 0u);
        }
        return bitcast<vec4<f32>>(x[i >> 2u]);
    }
    var v = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        if (c + j < k) {
            v[j] = ld_x1(base + c + j);
        }
    }
    return v;
}


@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    //SG @builtin(subgroup_invocation_id) sg_lane: u32, @builtin(subgroup_id) sg_id: u32, @builtin(num_subgroups) n_sg: u32,
    @builtin(local_invocation_index) lid: u32,
) {
    let sg = vec3<u32>(0u); //NOSG
    //SG let sg = vec3<u32>(sg_lane, sg_id, n_sg);
    let n0 = (wid.x + wid.y * p.groups_x) * ROWS;
    if (n0 >= p.n) {
        return;
    }
    let k = p.k;
    let rb = (k + 31u) / 32u;
    // Norm statistics of every x row (each workgroup computes them: x is small and cached).
    var mean: array<f32, M>;
    var rstd: array<f32, M>;
    if (NORM != 0u) {
        for (var m = 0u; m < M; m++) {
            var mu = 0.0;
            if (NORM == 1u) {
                var s = 0.0;
                for (var c = lid; c < k; c += WG) {
                    s += ld_x1(m * k + c);
                }
                mu = wg_sum(s, lid, sg) / f32(k);
            }
            var sq = 0.0;
            for (var c = lid; c < k; c += WG) {
                let v = ld_x1(m * k + c) - mu;
                sq += v * v;
            }
            mean[m] = mu;
            rstd[m] = inverseSqrt(wg_sum(sq, lid, sg) / f32(k) + p.eps);
        }
    }
    var acc: array<f32, NACC>;
    for (var a = 0u; a < NACC; a++) {
        acc[a] = 0.0;
    }
    for (var c = lid; c < rb * 4u; c += WG) {
        let blk = c >> 2u;
        let u = c & 3u;
        // Columns of the unit's two quads.
        let c0 = blk * 32u + select(8u * u, 4u * u, Q4);
        let c1 = c0 + select(4u, 16u, Q4);
        var xs: array<mat2x4<f32>, M>;
        for (var m = 0u; m < M; m++) {
            xs[m] = mat2x4<f32>(ld_x4(m * k, c0, k), ld_x4(m * k, c1, k));
            if (NORM != 0u) {
                for (var j = 0u; j < 4u; j++) {
                    if (c0 + j < k) {
                        xs[m][0][j] = nrm(xs[m][0][j], c0 + j, mean[m], rstd[m]);
                    }
                    if (c1 + j < k) {
                        xs[m][1][j] = nrm(xs[m][1][j], c1 + j, mean[m], rstd[m]);
                    }
                }
            }
        }
        for (var r = 0u; r < ROWS; r++) {
            if (n0 + r < p.n) {
                let row = n0 + r;
                let wq = unit_quads(row, rb, c);
                let d = block_scale(row * rb + blk);
                for (var m = 0u; m < M; m++) {
                    acc[r * M + m] += d * (dot(xs[m][0], wq[0]) + dot(xs[m][1], wq[1]));
                }
            }
        }
    }

    // Afterwards `parts` partial sums per accumulator a sit at red[a * WG + 0 .. parts].
    let parts = wg_partial_sums(acc, lid, sg);

    // Invocation (m, pair) writes outputs n0 + 2*pair and n0 + 2*pair + 1 of row m.
    if (lid < M * (ROWS / 2u)) {
        let m = lid / (ROWS / 2u);
        let r0 = (lid % (ROWS / 2u)) * 2u;
        if (n0 + r0 < p.n) {
            let two = n0 + r0 + 1u < p.n;
            var v = vec2<f32>(0.0);
            for (var i = 0u; i < parts; i++) {
                v.x += red[(r0 * M + m) * WG + i];
                if (two) {
                    v.y += red[((r0 + 1u) * M + m) * WG + i];
                }
            }
            let col = p.n_off + n0 + r0;
            if (HAS_BIAS) {
                v.x += ld_b(col);
                if (two) {
                    v.y += ld_b(col + 1u);
                }
            }
            finish(m, col, v, two);
        }
    }
}
