// Tiled matmul with a block-quantized weight (linear with M > 4: prefill, vision):
// out[m, n_off + n] = x[m, :] . deq(w)[n, :] (+ bias[n_off + n]), x [M, K] row-major, w in
// nn.Linear layout [N, K] quantized as in qgemv.wgsl. Like matmul.wgsl: a TM x TN tile of
// the output per workgroup, an RM x 4 block per invocation in f32 registers; the K step BK is one
// quantization block, so each step dequantizes one block of TN weight rows (one scale per
// row) straight into workgroup memory as f32 (d * q is exact in f32) and the inner loop is
// the float one. Workgroup memory: (TM + TN) * BK * 4 bytes = 16 KiB at TM = 64, 24 KiB at 128.
// A_VEC (K % 4 == 0): 16-byte (f32) or 8-byte (f16) loads of x quads. A weight larger than
// one binding is bound in row chunks (quants and scales alike): n counts this chunk's rows
// and n_off places them in the output and the bias.

struct Params {
    m: u32,
    // Weight rows (output columns) in this chunk.
    n: u32,
    k: u32,
    // Output row stride (total N).
    ldc: u32,
    n_off: u32,
}

const TM: u32 = 64u;
const TN: u32 = 64u;
// Rows of C per invocation (a multiple of 4): TM = RM * WG / 16.
const RM: u32 = 4u;
const BK: u32 = 32u;
const WG: u32 = 256u;
const Q4: bool = false;
const HAS_BIAS: bool = false;
const A_VEC: bool = false;
const A_F16: bool = false;
const BIAS_F16: bool = false;
const OUT_F16: bool = false;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> qs: array<u32>;
@group(0) @binding(3) var<storage, read> sc: array<u32>;
@group(0) @binding(4) var<storage, read> bias: array<u32>;
@group(0) @binding(5) var<storage, read_write> out: array<u32>;

// As[kk * TM/4 + r/4][r % 4] = x[m0 + r, k0 + kk]; Bs[kk * TN/4 + j/4][j % 4] = deq(w)[n0 + j, k0 + kk].
var<workgroup> As: array<vec4<f32>, BK * TM / 4u>;
var<workgroup> Bs: array<vec4<f32>, BK * TN / 4u>;

// Shared helpers, pasted in by `specialise` (the file is not valid WGSL without them).
// #include "pack.wgsl"
// #include "quant.wgsl"

fn ld_a1(i: u32) -> f32 {
    let w = word_of(i, A_F16);
    return elem(a[w >> 2u][w & 3u], i, A_F16);
}

// Elements i..i+4 with i % 4 == 0.
fn ld_a4(i: u32) -> vec4<f32> {
    if (A_F16) {
        return halves4(a[i >> 3u], (i & 4u) != 0u);
    }
    return bitcast<vec4<f32>>(a[i >> 2u]);
}

fn ld_bias(i: u32) -> f32 {
    return elem(bias[word_of(i, BIAS_F16)], i, BIAS_F16);
}

// x[row, col .. col + 4], zero past M rows and K columns.
fn ld_a_row4(row: u32, col: u32) -> vec4<f32> {
    var v = vec4<f32>(0.0);
    if (row < p.m) {
        let i = row * p.k + col;
        if (A_VEC && col + 3u < p.k) {
            v = ld_a4(i);
        } else {
            for (var j = 0u; j < 4u; j++) {
                if (col + j < p.k) {
                    v[j] = ld_a1(i + j);
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
    let rb = (p.k + 31u) / 32u;
    let tx = lid % (TN / 4u);
    let ty = lid / (TN / 4u);

    var acc: array<vec4<f32>, RM>;
    for (var i = 0u; i < RM; i++) {
        acc[i] = vec4<f32>(0.0);
    }

    for (var blk = 0u; blk < rb; blk++) {
        let k0 = blk * BK;
        // x tile: TM rows x BK/4 quads along K.
        for (var g = lid; g < TM * BK / 4u; g += WG) {
            let r = g / (BK / 4u);
            let kq = (g % (BK / 4u)) * 4u;
            let v = ld_a_row4(m0 + r, k0 + kq);
            for (var j = 0u; j < 4u; j++) {
                As[(kq + j) * (TM / 4u) + r / 4u][r % 4u] = v[j];
            }
        }
        // Weight tile: TN rows x 4 units of 8 values, dequantized and transposed into Bs.
        for (var g = lid; g < TN * 4u; g += WG) {
            let r = g / 4u;
            let u = g % 4u;
            let row = n0 + r;
            var q = mat2x4<f32>(vec4<f32>(0.0), vec4<f32>(0.0));
            var d = 0.0;
            if (row < p.n) {
                q = unit_quads(row, rb, blk * 4u + u);
                d = block_scale(row * rb + blk);
            }
            let kk0 = select(8u * u, 4u * u, Q4);
            let kk1 = kk0 + select(4u, 16u, Q4);
            for (var j = 0u; j < 4u; j++) {
                Bs[(kk0 + j) * (TN / 4u) + r / 4u][r % 4u] = d * q[0][j];
                Bs[(kk1 + j) * (TN / 4u) + r / 4u][r % 4u] = d * q[1][j];
            }
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let bv = Bs[kk * (TN / 4u) + tx];
            for (var q = 0u; q < RM / 4u; q++) {
                let av = As[kk * (TM / 4u) + ty * (RM / 4u) + q];
                acc[4u * q] += av.x * bv;
                acc[4u * q + 1u] += av.y * bv;
                acc[4u * q + 2u] += av.z * bv;
                acc[4u * q + 3u] += av.w * bv;
            }
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
            let base = row * p.ldc + p.n_off + col;
            if (col < p.n) {
                st_pair(base, v.x, v.y, col + 1u < p.n);
            }
            if (col + 2u < p.n) {
                st_pair(base + 2u, v.z, v.w, col + 3u < p.n);
            }
        }
    }
}
