// GEMV for linear layers with few rows of x (decode): out[m, n_off + n] = x[m, :] . w[n, :]
// (+ b[n_off + n]) for m < M (1..=4), w in nn.Linear layout [N, K]. Memory-bound on w: each
// workgroup streams ROWS weight rows once, every x row reuses them from registers.
// VEC (K % 8 == 0): 16-byte loads of 8 elements (f16: one vec4<u32> of packed pairs, f32:
// two vec4s). Partial sums are reduced across the workgroup (subgroups when enabled, never
// assuming a subgroup size). A weight larger than one binding is bound in row chunks: w
// starts at chunk row 0 and n_off places the chunk in the output.
// Fusions (decode): NORM normalises every x row as it is read (1: LayerNorm with weight nw and
// bias nb, 2: RMSNorm with weight nw; statistics in f32 computed by every workgroup, two
// passes as norm.wgsl); EPI applies an activation (1) or a gated activation (2: weight rows
// interleaved gate/up, out[m, j] = act(row 2j) * row 2j+1, output stride ldo / 2) after the
// bias; RESIDUAL adds res (laid out as out) last.
// f16 arithmetic (the `//H` lines, `enable f16;`; VEC with f16 weights only): w is read as
// vec4<f16>, x slices are converted to f16 (exact when x is stored f16; an f32 x, which the
// engine allows only when asked to, is rounded; with the NORM prologue the normalised values
// are rounded, as the unfused path stores its f16 norm output; the norm statistics stay
// f32), and the 8 products of a slice are summed in f16
// (two dot()s and one add: a run of 8 terms, one 16-byte weight load), then added to the
// f32 accumulator; the cross-invocation reduction, bias, epilogue and residual are f32.
// The `//NOH` lines are the packed-pair path that the f16 variant replaces.

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
const VEC: bool = false;
const HAS_BIAS: bool = false;
const X_F16: bool = false;
const W_F16: bool = false;
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
@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>; //NOH
//H @group(0) @binding(2) var<storage, read> w: array<vec4<f16>>;
@group(0) @binding(3) var<storage, read> b: array<u32>;
@group(0) @binding(4) var<storage, read> nw: array<f32>;
@group(0) @binding(5) var<storage, read> nb: array<f32>;
@group(0) @binding(6) var<storage, read> res: array<u32>;
@group(0) @binding(7) var<storage, read_write> out: array<u32>;

// Shared helpers, pasted in by `specialise` (the file is not valid WGSL without them).
// #include "pack.wgsl"
// #include "reduce.wgsl"
// #include "act.wgsl"
// #include "gemv_fusion.wgsl"

fn word_x(i: u32) -> u32 {
    return x[i >> 2u][i & 3u];
}

fn word_w(i: u32) -> u32 { //NOH
    return w[i >> 2u][i & 3u]; //NOH
} //NOH

fn ld_x1(i: u32) -> f32 {
    return elem(word_x(word_of(i, X_F16)), i, X_F16);
}

fn ld_w1(i: u32) -> f32 { //NOH
    return elem(word_w(word_of(i, W_F16)), i, W_F16); //NOH
} //NOH
//H fn ld_w1(i: u32) -> f32 { return f32(w[i >> 2u][i & 3u]); }

fn ld_b(i: u32) -> f32 {
    return elem(b[word_of(i, B_F16)], i, B_F16);
}

// Elements i..i+8 (i % 8 == 0) as two vec4s.
fn ld_x8(i: u32) -> mat2x4<f32> {
    if (X_F16) {
        return halves8(x[i >> 3u]);
    }
    return mat2x4<f32>(bitcast<vec4<f32>>(x[i >> 2u]), bitcast<vec4<f32>>(x[(i >> 2u) + 1u]));
}

fn ld_w8(i: u32) -> mat2x4<f32> { //NOH
    if (W_F16) { //NOH
        return halves8(w[i >> 3u]); //NOH
    } //NOH
    return mat2x4<f32>(bitcast<vec4<f32>>(w[i >> 2u]), bitcast<vec4<f32>>(w[(i >> 2u) + 1u])); //NOH
} //NOH


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
    if (VEC) {
        for (var c = lid * 8u; c < k; c += WG * 8u) {
            var xs: array<mat2x4<f32>, M>;
            for (var m = 0u; m < M; m++) {
                xs[m] = ld_x8(m * k + c);
                if (NORM != 0u) {
                    for (var j = 0u; j < 8u; j++) {
                        xs[m][j / 4u][j % 4u] = nrm(xs[m][j / 4u][j % 4u], c + j, mean[m], rstd[m]);
                    }
                }
            }
            //H var xh: array<mat2x4<f16>, M>;
            //H for (var m = 0u; m < M; m++) { xh[m] = mat2x4<f16>(vec4<f16>(xs[m][0]), vec4<f16>(xs[m][1])); }
            for (var r = 0u; r < ROWS; r++) {
                if (n0 + r < p.n) {
                    let wv = ld_w8((n0 + r) * k + c); //NOH
                    for (var m = 0u; m < M; m++) { //NOH
                        acc[r * M + m] += dot(xs[m][0], wv[0]) + dot(xs[m][1], wv[1]); //NOH
                    } //NOH
                    //H let wi = ((n0 + r) * k + c) >> 2u;
                    //H let w0 = w[wi];
                    //H let w1 = w[wi + 1u];
                    //H for (var m = 0u; m < M; m++) { acc[r * M + m] += f32(dot(xh[m][0], w0) + dot(xh[m][1], w1)); }
                }
            }
        }
    } else {
        for (var c = lid; c < k; c += WG) {
            for (var r = 0u; r < ROWS; r++) {
                if (n0 + r < p.n) {
                    let wv = ld_w1((n0 + r) * k + c);
                    for (var m = 0u; m < M; m++) {
                        acc[r * M + m] += nrm(ld_x1(m * k + c), c, mean[m], rstd[m]) * wv;
                    }
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
