// Tensor-core linear layer: out[m, n] = x[m, :] . w[n, :] (+ b[n]) for x [M, K] (f32 or f16)
// and f16 w in nn.Linear layout [N, K], on 16x16x16 cooperative matrices: f16 products, f32
// accumulation (wgpu's EXPERIMENTAL_COOPERATIVE_MATRIX; Vulkan VK_KHR_cooperative_matrix).
//
// One workgroup is one subgroup (SG invocations: the adapter's fixed subgroup size, which
// the engine checks before choosing this kernel) and computes a (TM*16) x (TN*16) block of
// out. Per K step of 16:
// - the block's TM x tiles are staged through workgroup memory as f16, bounds-checked, so
//   any M works and the rows past M are zero;
// - the TN w tiles are loaded straight from storage as B = W^T column-major, whose stride
//   is K: naga wants a compile-time stride, so K is a constant and pipelines are specialised
//   per weight width. N and K must be multiples of 16 (the engine falls back otherwise).
// The accumulators are stored row-major into workgroup memory, from where the bias, the
// bound on M and the output dtype are applied, two adjacent columns per invocation.

enable f16;
enable wgpu_cooperative_matrix;

struct Params {
    // Rows of x and out.
    m: u32,
    // Weight rows (outputs) in this chunk of w.
    n: u32,
    // Output row stride (total N) and where this chunk's columns start: a weight larger
    // than one binding is bound in row chunks, as the GEMV does.
    ldo: u32,
    n_off: u32,
    // Workgroups along n (the dispatch's x extent).
    groups_x: u32,
}

// Weight row length K (a multiple of 16): the coopLoad stride of w.
const K: u32 = 64u;
// Invocations per workgroup = the subgroup size.
const SG: u32 = 32u;
// 16x16 tiles per workgroup along m and n.
const TM: u32 = 2u;
const TN: u32 = 2u;
const HAS_BIAS: bool = false;
const X_F16: bool = false;
const B_F16: bool = false;
const OUT_F16: bool = false;

const BM: u32 = TM * 16u;
const BN: u32 = TN * 16u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read> w: array<f16>;
@group(0) @binding(3) var<storage, read> b: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<u32>;

// #include "pack.wgsl"

// The block's x rows for one K step, row-major (BM x 16).
var<workgroup> xs: array<f16, BM * 16u>;
// The block's results, row-major (BM x BN).
var<workgroup> cs: array<f32, BM * BN>;

@compute @workgroup_size(SG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let n0 = (wid.y * p.groups_x + wid.x) * BN;
    let m0 = wid.z * BM;
    if (n0 >= p.n) {
        // Whole workgroup (one subgroup) leaves together: uniform.
        return;
    }
    var acc: array<array<coop_mat16x16<f32, C>, TN>, TM>;
    for (var k0 = 0u; k0 < K; k0 += 16u) {
        workgroupBarrier();
        for (var e = li; e < BM * 16u; e += SG) {
            let r = m0 + e / 16u;
            var v = 0.0;
            if (r < p.m) {
                let i = r * K + k0 + e % 16u;
                v = elem(x[word_of(i, X_F16)], i, X_F16);
            }
            xs[e] = f16(v);
        }
        workgroupBarrier();
        for (var tn = 0u; tn < TN; tn++) {
            // B = W^T (K x N) column-major: element (k, n) at w[n * K + k].
            let wt = coopLoad<coop_mat16x16<f16, B>>(&w[(n0 + tn * 16u) * K + k0], K);
            for (var tm = 0u; tm < TM; tm++) {
                let xt = coopLoadT<coop_mat16x16<f16, A>>(&xs[tm * 256u], 16u);
                acc[tm][tn] = coopMultiplyAdd(xt, wt, acc[tm][tn]);
            }
        }
    }
    for (var tm = 0u; tm < TM; tm++) {
        for (var tn = 0u; tn < TN; tn++) {
            coopStoreT(acc[tm][tn], &cs[tm * 16u * BN + tn * 16u], BN);
        }
    }
    workgroupBarrier();
    for (var e = li; e < BM * BN / 2u; e += SG) {
        let r = (2u * e) / BN;
        let c = (2u * e) % BN;
        if (m0 + r < p.m) {
            var v0 = cs[r * BN + c];
            var v1 = cs[r * BN + c + 1u];
            let col = p.n_off + n0 + c;
            if (HAS_BIAS) {
                v0 += elem(b[word_of(col, B_F16)], col, B_F16);
                v1 += elem(b[word_of(col + 1u, B_F16)], col + 1u, B_F16);
            }
            st_pair((m0 + r) * p.ldo + col, v0, v1, true);
        }
    }
}
