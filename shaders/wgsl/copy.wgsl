// Data movement without arithmetic; f16 halves are moved as bits (exact).
// MODE_BOX, box copy (narrow, concat, in-place write_at, row gathers): for each outer row
//   o < rows, dst[o * a0 + a1 + l] = src[o * a2 + a3 + l] for l < len. With f16 an invocation
//   owns one destination word of one row and keeps the half that lies outside the box
//   (read-modify-write), so boxes need not start on a word; two rows of one dispatch must
//   not meet inside a word (the engine copies such rows in separate dispatches).
// MODE_PERMUTE_0213: out [B, C, A, D] from x [B, A, C, D] (a0 = A, a1 = C, a2 = D).
// MODE_IM2COL: x [B, C, H, W] -> out [B, (H/P)(W/P), C*P*P], inner order (c, ky, kx)
//   (a0 = C, a1 = H, a2 = W, a3 = P).
// The gather modes write every output element: an invocation owns elements (2u, 2u+1).

struct Params {
    // Mode 0: invocations per outer row; modes 1/2: output elements.
    units: u32,
    rows: u32,
    len: u32,
    a0: u32,
    a1: u32,
    a2: u32,
    a3: u32,
    groups_x: u32,
}

// Modes: the discriminants of `blip2_shaders::CopyMode` (a test checks they agree).
const MODE_BOX: u32 = 0u;
const MODE_PERMUTE_0213: u32 = 1u;
const MODE_IM2COL: u32 = 2u;

const MODE: u32 = MODE_BOX;
const F16: bool = false;
const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;

// Raw bits of element i (f16: the half in the low 16 bits).
fn ld_bits(i: u32) -> u32 {
    if (F16) {
        return (x[i >> 1u] >> ((i & 1u) * 16u)) & 0xffffu;
    }
    return x[i];
}

fn gather_src(e: u32) -> u32 {
    if (MODE == MODE_PERMUTE_0213) {
        let a_n = p.a0;
        let c_n = p.a1;
        let d_n = p.a2;
        let dd = e % d_n;
        let t = e / d_n;
        let a = t % a_n;
        let t2 = t / a_n;
        let c = t2 % c_n;
        let b = t2 / c_n;
        return ((b * a_n + a) * c_n + c) * d_n + dd;
    }
    // MODE_IM2COL
    let c_n = p.a0;
    let h_n = p.a1;
    let w_n = p.a2;
    let pp = p.a3;
    let cols = c_n * pp * pp;
    let patches_x = w_n / pp;
    let patches = (h_n / pp) * patches_x;
    let col = e % cols;
    let t = e / cols;
    let pidx = t % patches;
    let b = t / patches;
    let c = col / (pp * pp);
    let ky = (col / pp) % pp;
    let kx = col % pp;
    let py = pidx / patches_x;
    let px = pidx % patches_x;
    return ((b * c_n + c) * h_n + py * pp + ky) * w_n + px * pp + kx;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let g = (wid.x + wid.y * p.groups_x) * WG + lid;
    if (MODE == MODE_BOX) {
        let o = g / p.units;
        let u = g % p.units;
        if (o >= p.rows) {
            return;
        }
        let ds = o * p.a0 + p.a1;
        let ss = o * p.a2 + p.a3;
        let de = ds + p.len;
        if (F16) {
            let w = (ds >> 1u) + u;
            if (w > ((de - 1u) >> 1u)) {
                return;
            }
            var word = out[w];
            for (var h = 0u; h < 2u; h++) {
                let e = w * 2u + h;
                if (e >= ds && e < de) {
                    let sh = h * 16u;
                    word = (word & ~(0xffffu << sh)) | (ld_bits(ss + (e - ds)) << sh);
                }
            }
            out[w] = word;
        } else {
            let l = u * 2u;
            if (l < p.len) {
                out[ds + l] = x[ss + l];
            }
            if (l + 1u < p.len) {
                out[ds + l + 1u] = x[ss + l + 1u];
            }
        }
        return;
    }
    let e0 = g * 2u;
    if (e0 >= p.units) {
        return;
    }
    let two = e0 + 1u < p.units;
    if (F16) {
        var word = ld_bits(gather_src(e0));
        if (two) {
            word = word | (ld_bits(gather_src(e0 + 1u)) << 16u);
        }
        out[g] = word;
    } else {
        out[e0] = x[gather_src(e0)];
        if (two) {
            out[e0 + 1u] = x[gather_src(e0 + 1u)];
        }
    }
}
