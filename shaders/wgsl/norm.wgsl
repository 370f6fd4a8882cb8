// LayerNorm and RMSNorm over the last dim: one workgroup per row, f32 statistics.
// LayerNorm: (x - mean) * rsqrt(var + eps) * w + b, two passes (mean, then centred
// variance) so large means do not cancel. RMSNorm (T5): x * rsqrt(mean(x^2) + eps) * w.
// Outputs are written as element pairs; with an f16 output the engine guarantees rows
// start on a word (even d, or a single row).

struct Params {
    rows: u32,
    d: u32,
    eps: f32,
    groups_x: u32,
}

const RMS: bool = false;
const HAS_BIAS: bool = true;
const X_F16: bool = false;
const W_F16: bool = false;
const B_F16: bool = false;
const OUT_F16: bool = false;
const WG: u32 = 256u;
const RED_N: u32 = 1u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read> b: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<u32>;

// Shared helpers, pasted in by `specialise` (the file is not valid WGSL without them).
// #include "pack.wgsl"
// #include "reduce.wgsl"

fn ld_x(i: u32) -> f32 {
    return elem(x[word_of(i, X_F16)], i, X_F16);
}

fn ld_w(i: u32) -> f32 {
    return elem(w[word_of(i, W_F16)], i, W_F16);
}

fn ld_b(i: u32) -> f32 {
    return elem(b[word_of(i, B_F16)], i, B_F16);
}

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    //SG @builtin(subgroup_invocation_id) sg_lane: u32, @builtin(subgroup_id) sg_id: u32, @builtin(num_subgroups) n_sg: u32,
    @builtin(local_invocation_index) lid: u32,
) {
    let sg = vec3<u32>(0u); //NOSG
    //SG let sg = vec3<u32>(sg_lane, sg_id, n_sg);
    let row = wid.x + wid.y * p.groups_x;
    if (row >= p.rows) {
        return;
    }
    let d = p.d;
    let base = row * d;
    var mean = 0.0;
    if (!RMS) {
        var s = 0.0;
        for (var i = lid; i < d; i += WG) {
            s += ld_x(base + i);
        }
        mean = wg_sum(s, lid, sg) / f32(d);
    }
    var q = 0.0;
    for (var i = lid; i < d; i += WG) {
        let v = ld_x(base + i) - mean;
        q += v * v;
    }
    let inv = inverseSqrt(wg_sum(q, lid, sg) / f32(d) + p.eps);
    for (var pr = lid; pr * 2u < d; pr += WG) {
        let i0 = pr * 2u;
        let two = i0 + 1u < d;
        var y0 = (ld_x(base + i0) - mean) * inv * ld_w(i0);
        var y1 = 0.0;
        if (two) {
            y1 = (ld_x(base + i0 + 1u) - mean) * inv * ld_w(i0 + 1u);
        }
        if (HAS_BIAS) {
            y0 += ld_b(i0);
            if (two) {
                y1 += ld_b(i0 + 1u);
            }
        }
        st_pair(base + i0, y0, y1, two);
    }
}
