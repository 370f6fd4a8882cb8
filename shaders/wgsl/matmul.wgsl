// Tiled batched matmul with register blocking: C[z] = A[z] . op(B[z]) (+ bias), where
// A is [M, K] row-major, op(B) = B^T for B [N, K] (B_TRANS, nn.Linear weights, q.k^T) or
// B for B [K, N]. A TM x TN tile of C per workgroup, BK-deep slices of A and B staged in
// workgroup memory, an RM x 4 block of C per invocation (RM = 4, or 8 in the largest tile)
// accumulated in f32 registers.
// A_VEC / B_VEC: the contiguous dim is a multiple of 4 elements, so tile loads are 16-byte
// (f32) or 8-byte (f16) vector loads. A weight larger than one binding is bound in row
// chunks (B_TRANS): n counts this chunk's rows and n_off places them in C and the bias.
// f16 arithmetic (the `//H` lines, `enable f16;`; f16 B only): B is read as vec4<f16>, A is
// staged as f16 (exact when A is stored f16; an f32 A, which the engine allows only when
// asked to, is rounded), the tiles in workgroup memory are f16 (type T),
// and every RUN = 8 steps along K the f16 products of each output, summed in f16 registers
// (a run of 8 terms: f16 sums of more terms grow their rounding error with the length and
// come nearer the f16 range), are added to the f32 accumulators; the bias and the store
// are f32.
// The `//NOH` lines are the packed-pair f32 path that the f16 variant replaces.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    lda: u32,
    ldb: u32,
    ldc: u32,
    n_off: u32,
    a_bs: u32,
    b_bs: u32,
    c_bs: u32,
}

const TM: u32 = 64u;
const TN: u32 = 64u;
// Rows of C per invocation (a multiple of 4): TM = RM * WG / 16.
const RM: u32 = 4u;
const BK: u32 = 16u;
const WG: u32 = 256u;
// Products summed in f16 before they join the f32 accumulators (f16 variant; divides BK).
const RUN: u32 = 8u;
const B_TRANS: bool = true;
const HAS_BIAS: bool = false;
const A_VEC: bool = false;
const B_VEC: bool = false;
const A_F16: bool = false;
const B_F16: bool = false;
const BIAS_F16: bool = false;
const OUT_F16: bool = false;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> b: array<vec4<u32>>; //NOH
//H @group(0) @binding(2) var<storage, read> b: array<vec4<f16>>;
@group(0) @binding(3) var<storage, read> bias: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<u32>;

// As[kk * TM/4 + r/4][r % 4] = A[m0 + r, k0 + kk]; Bs[kk * TN/4 + j/4][j % 4] = opB[k0 + kk, n0 + j].
// The tiles' element type: f32, or f16 in the f16 variant.
alias T = f32; //NOH
//H alias T = f16;
var<workgroup> As: array<vec4<T>, BK * TM / 4u>;
var<workgroup> Bs: array<vec4<T>, BK * TN / 4u>;

// Shared helpers, pasted in by `specialise` (the file is not valid WGSL without them).
// #include "pack.wgsl"

fn word_a(i: u32) -> u32 {
    return a[i >> 2u][i & 3u];
}

fn word_b(i: u32) -> u32 { //NOH
    return b[i >> 2u][i & 3u]; //NOH
} //NOH

fn ld_a1(i: u32) -> f32 {
    return elem(word_a(word_of(i, A_F16)), i, A_F16);
}

fn ld_b1(i: u32) -> f32 { //NOH
    return elem(word_b(word_of(i, B_F16)), i, B_F16); //NOH
} //NOH
//H fn ld_b1(i: u32) -> f32 { return f32(b[i >> 2u][i & 3u]); }

// Elements i..i+4 with i % 4 == 0.
fn ld_a4(i: u32) -> vec4<f32> {
    if (A_F16) {
        return halves4(a[i >> 3u], (i & 4u) != 0u);
    }
    return bitcast<vec4<f32>>(a[i >> 2u]);
}

fn ld_b4(i: u32) -> vec4<f32> { //NOH
    if (B_F16) { //NOH
        return halves4(b[i >> 3u], (i & 4u) != 0u); //NOH
    } //NOH
    return bitcast<vec4<f32>>(b[i >> 2u]); //NOH
} //NOH
//H fn ld_b4(i: u32) -> vec4<f32> { return vec4<f32>(b[i >> 2u]); }

fn ld_bias(i: u32) -> f32 {
    return elem(bias[word_of(i, BIAS_F16)], i, BIAS_F16);
}

// 4 consecutive elements of row `row` (< rows) from column `col`, zero past `cols`.
fn ld_a_row4(base: u32, row: u32, rows: u32, col: u32, cols: u32, ld: u32) -> vec4<f32> {
    var v = vec4<f32>(0.0);
    if (row < rows) {
        let i = base + row * ld + col;
        if (A_VEC && col + 3u < cols) {
            v = ld_a4(i);
        } else {
            for (var j = 0u; j < 4u; j++) {
                if (col + j < cols) {
                    v[j] = ld_a1(i + j);
                }
            }
        }
    }
    return v;
}

fn ld_b_row4(base: u32, row: u32, rows: u32, col: u32, cols: u32, ld: u32) -> vec4<f32> {
    var v = vec4<f32>(0.0);
    if (row < rows) {
        let i = base + row * ld + col;
        if (B_VEC && col + 3u < cols) {
            v = ld_b4(i);
        } else {
            for (var j = 0u; j < 4u; j++) {
                if (col + j < cols) {
                    v[j] = ld_b1(i + j);
                }
            }
        }
    }
    return v;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let n0 = wid.x * TN;
    let m0 = wid.y * TM;
    let z = wid.z;
    let a_base = z * p.a_bs;
    let b_base = z * p.b_bs;
    let tx = lid % (TN / 4u);
    let ty = lid / (TN / 4u);

    var acc: array<vec4<f32>, RM>;
    for (var i = 0u; i < RM; i++) {
        acc[i] = vec4<f32>(0.0);
    }
    //H var run: array<vec4<f16>, RM>;

    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        // A tile: TM rows x BK/4 quads along K.
        for (var g = lid; g < TM * BK / 4u; g += WG) {
            let r = g / (BK / 4u);
            let kq = (g % (BK / 4u)) * 4u;
            let v = ld_a_row4(a_base, m0 + r, p.m, k0 + kq, p.k, p.lda);
            for (var j = 0u; j < 4u; j++) {
                As[(kq + j) * (TM / 4u) + r / 4u][r % 4u] = T(v[j]);
            }
        }
        if (B_TRANS) {
            // B [N, K]: TN rows x BK/4 quads along K, transposed into Bs.
            for (var g = lid; g < TN * BK / 4u; g += WG) {
                let r = g / (BK / 4u);
                let kq = (g % (BK / 4u)) * 4u;
                let v = ld_b_row4(b_base, n0 + r, p.n, k0 + kq, p.k, p.ldb);
                for (var j = 0u; j < 4u; j++) {
                    Bs[(kq + j) * (TN / 4u) + r / 4u][r % 4u] = T(v[j]);
                }
            }
        } else {
            // B [K, N]: BK rows x TN/4 quads along N, stored as they are.
            for (var g = lid; g < BK * TN / 4u; g += WG) {
                let kk = g / (TN / 4u);
                let cq = g % (TN / 4u);
                Bs[kk * (TN / 4u) + cq] = vec4<T>(ld_b_row4(b_base, k0 + kk, p.k, n0 + cq * 4u, p.n, p.ldb));
            }
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let bv = Bs[kk * (TN / 4u) + tx];
            for (var q = 0u; q < RM / 4u; q++) {
                let av = As[kk * (TM / 4u) + ty * (RM / 4u) + q];
                acc[4u * q] += av.x * bv; //NOH
                acc[4u * q + 1u] += av.y * bv; //NOH
                acc[4u * q + 2u] += av.z * bv; //NOH
                acc[4u * q + 3u] += av.w * bv; //NOH
                //H run[4u * q] += av.x * bv;
                //H run[4u * q + 1u] += av.y * bv;
                //H run[4u * q + 2u] += av.z * bv;
                //H run[4u * q + 3u] += av.w * bv;
            }
            //H if (kk % RUN == RUN - 1u) { for (var i = 0u; i < RM; i++) { acc[i] += vec4<f32>(run[i]); run[i] = vec4<f16>(0.0h); } }
        }
        workgroupBarrier();
    }

    let col = n0 + tx * 4u;
    var bv = vec4<f32>(0.0);
    if (HAS_BIAS) {
        for (var j = 0u; j < 4u; j++) {
            if (col + j < p.n) {
                bv[j] = ld_bias(p.n_off + col + j);
            }
        }
    }
    for (var i = 0u; i < RM; i++) {
        let row = m0 + ty * RM + i;
        if (row < p.m) {
            let v = acc[i] + bv;
            let base = z * p.c_bs + row * p.ldc + p.n_off + col;
            if (col < p.n) {
                st_pair(base, v.x, v.y, col + 1u < p.n);
            }
            if (col + 2u < p.n) {
                st_pair(base + 2u, v.z, v.w, col + 3u < p.n);
            }
        }
    }
}
