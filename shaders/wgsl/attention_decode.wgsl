// Decode attention with the K/V append fused in: one workgroup per (batch, head) of a single
// new token whose q, k and v are row b of a fused projection qkv [B, 3 * hidden] (q at
// h * d, k at hidden + h * d, v at 2 * hidden + h * d). The workgroup first writes the new
// k/v into column pos of its own [lk_cap, d] slab of the caches (only it reads that slab, so
// a storage barrier inside the workgroup orders the write before the reads), then computes
// softmax(q.k^T * scale + mask + bias) . v over the first lk = pos + 1 columns as
// attention.wgsl does (online softmax in blocks of WG keys). The query is the last
// position, so causal masking hides nothing. Output [B, hidden] = [B, H, 1, d]. q, k, v,
// caches and output share one dtype; with f16, d is even (rows start on a word).

struct Params {
    lk: u32,
    lk_cap: u32,
    d: u32,
    heads: u32,
    rows: u32,
    scale: f32,
    // Cache column of the new token (lk - 1).
    pos: u32,
    // Elements per row of qkv (3 * hidden).
    ld_qkv: u32,
    hidden: u32,
    groups_x: u32,
}

const QKV_F16: bool = false;
const HAS_MASK: bool = false;
const HAS_BIAS: bool = false;
// d is even: q/k/v rows start on a word, read element pairs.
const D_EVEN: bool = true;
const OUT_F16: bool = QKV_F16;
const WG: u32 = 128u;
// Output element pairs per invocation.
const NS: u32 = 2u;
const DMAX: u32 = 2u * WG * NS;
const RED_N: u32 = 1u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> qkv: array<u32>;
@group(0) @binding(2) var<storage, read> mask: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> k: array<u32>;
@group(0) @binding(5) var<storage, read_write> v: array<u32>;
@group(0) @binding(6) var<storage, read_write> out: array<u32>;

var<workgroup> qs: array<f32, DMAX>;
var<workgroup> ps: array<f32, WG>;

const NEG_INF: f32 = -3.40282347e38;

// Shared helpers, pasted in by `specialise` (the file is not valid WGSL without them).
// #include "pack.wgsl"
// #include "reduce.wgsl"

// Element i of k (buf 1) or v (2).
fn ld1(buf: u32, i: u32) -> f32 {
    var w = 0u;
    let wi = word_of(i, QKV_F16);
    if (buf == 1u) {
        w = k[wi];
    } else {
        w = v[wi];
    }
    return elem(w, i, QKV_F16);
}

// Elements i, i+1 (i even when D_EVEN).
fn ld2(buf: u32, i: u32) -> vec2<f32> {
    if (QKV_F16 && D_EVEN) {
        var w = 0u;
        if (buf == 1u) {
            w = k[i >> 1u];
        } else {
            w = v[i >> 1u];
        }
        return unpack2x16float(w);
    }
    return vec2<f32>(ld1(buf, i), ld1(buf, i + 1u));
}

fn ld_qkv(i: u32) -> f32 {
    return elem(qkv[word_of(i, QKV_F16)], i, QKV_F16);
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
    let h = row % p.heads;
    let bb = row / p.heads;
    let qb = bb * p.ld_qkv + h * d;
    let kvbase = row * p.lk_cap * d;
    let nb = kvbase + p.pos * d;
    let moff = bb * p.lk;
    let boff = h * p.lk;

    // Append the new key and value (whole words: with f16, d, hidden and ld_qkv are even).
    if (QKV_F16) {
        for (var wd = lid; wd * 2u < d; wd += WG) {
            k[(nb >> 1u) + wd] = qkv[((qb + p.hidden) >> 1u) + wd];
            v[(nb >> 1u) + wd] = qkv[((qb + 2u * p.hidden) >> 1u) + wd];
        }
    } else {
        for (var dd = lid; dd < d; dd += WG) {
            k[nb + dd] = qkv[qb + p.hidden + dd];
            v[nb + dd] = qkv[qb + 2u * p.hidden + dd];
        }
    }
    for (var dd = lid; dd < d; dd += WG) {
        qs[dd] = ld_qkv(qb + dd);
    }
    storageBarrier();
    workgroupBarrier();

    var m = NEG_INF;
    var l = 0.0;
    var acc: array<vec2<f32>, NS>;
    for (var s = 0u; s < NS; s++) {
        acc[s] = vec2<f32>(0.0);
    }
    for (var blk = 0u; blk < p.lk; blk += WG) {
        let j = blk + lid;
        var valid = j < p.lk;
        var sc = NEG_INF;
        if (valid) {
            var qk = 0.0;
            let kb = kvbase + j * d;
            if (D_EVEN) {
                for (var dd = 0u; dd < d; dd += 2u) {
                    let kv = ld2(1u, kb + dd);
                    qk += qs[dd] * kv.x + qs[dd + 1u] * kv.y;
                }
            } else {
                for (var dd = 0u; dd < d; dd++) {
                    qk += qs[dd] * ld1(1u, kb + dd);
                }
            }
            sc = qk * p.scale;
            if (HAS_MASK) {
                sc += mask[moff + j];
            }
            if (HAS_BIAS) {
                sc += bias[boff + j];
            }
        }
        let m_new = max(m, wg_max(sc, lid, sg));
        let corr = exp(m - m_new);
        var pj = 0.0;
        if (valid) {
            pj = exp(sc - m_new);
        }
        ps[lid] = pj;
        l = l * corr + wg_sum(pj, lid, sg);
        let nk = min(WG, p.lk - blk);
        for (var s = 0u; s < NS; s++) {
            let dd0 = 2u * (lid + s * WG);
            if (dd0 < d) {
                var a2 = acc[s] * corr;
                for (var jj = 0u; jj < nk; jj++) {
                    let vb = kvbase + (blk + jj) * d + dd0;
                    var vv = vec2<f32>(0.0);
                    if (dd0 + 1u < d) {
                        vv = ld2(2u, vb);
                    } else {
                        vv.x = ld1(2u, vb);
                    }
                    a2 += ps[jj] * vv;
                }
                acc[s] = a2;
            }
        }
        m = m_new;
        workgroupBarrier();
    }
    let inv = 1.0 / l;
    for (var s = 0u; s < NS; s++) {
        let dd0 = 2u * (lid + s * WG);
        if (dd0 < d) {
            st_pair(row * d + dd0, acc[s].x * inv, acc[s].y * inv, dd0 + 1u < d);
        }
    }
}
