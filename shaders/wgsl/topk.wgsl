// Top-k candidates on the device, so that sampling with a top-k warper reads back ~k entries
// of a row instead of the whole vocabulary. Per row of x [rows, n]: every entry that is
// finite, not excluded (up to four ids) and >= the k-th largest such value (counted with
// multiplicity; ties with the k-th are all in, so more than k entries are possible; all of
// them when the row has fewer than k), and the row's non-finite count before exclusion.
//
// One workgroup per row. Values are compared as order-preserving u32 keys made from their
// stored bits (sign bit flipped for positives, all bits inverted for negatives, -0 as +0), so
// the result is exact on any adapter (no float arithmetic: subnormals are not flushed) and
// f16 rows need no conversion (their 16-bit key sits in the high half). The k-th largest key
// is found by radix select: levels of 8 bits, highest first, each counting into a 256-bin
// workgroup histogram only the keys that match the digits chosen so far (2 levels for f16,
// 4 for f32). A last pass appends every candidate >= that key to the row's slot with a
// workgroup counter (arbitrary order: the host sorts by id); all are counted, the first
// max_out written.
//
// Output, 2 + 2 * max_out words a row: [count, non-finite count, id0, bits0, id1, bits1, ...]
// with bits the stored value (f32 bits, or the f16 half in the low 16 bits). count > max_out
// means the row did not fit (the ids written are then a partial set).

struct Params {
    n: u32,
    rows: u32,
    k: u32,
    max_out: u32,
    n_excl: u32,
    e0: u32,
    e1: u32,
    e2: u32,
    e3: u32,
    groups_x: u32,
}

const X_F16: bool = false;
// The histogram is zeroed and scanned one bin per invocation: BINS == WG.
const WG: u32 = 256u;
const BINS: u32 = 256u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;

var<workgroup> hist: array<atomic<u32>, BINS>;
// Suffix sums of hist: geq[d] = keys of this level with digit >= d.
var<workgroup> geq: array<u32, BINS>;
// The digit chosen by a level, and the keys above it (digits > the chosen one).
var<workgroup> digit: u32;
var<workgroup> above: u32;
// Candidates of the row (level 0's histogram total).
var<workgroup> total: u32;
var<workgroup> n_out: atomic<u32>;
var<workgroup> bad: atomic<u32>;

// Stored bits of element i: the f32 word, or the f16 half in the low 16 bits.
fn stored(i: u32) -> u32 {
    if (X_F16) {
        return (x[i >> 1u] >> ((i & 1u) * 16u)) & 0xffffu;
    }
    return x[i];
}

// Exponent not all ones (neither ±inf nor NaN).
fn finite(b: u32) -> bool {
    if (X_F16) {
        return (b & 0x7c00u) != 0x7c00u;
    }
    return (b & 0x7f800000u) != 0x7f800000u;
}

// Key whose u32 order is the numeric order of finite values (-0 and +0 equal). f16: the half
// moved to the high 16 bits, low bits zero.
fn key_of(b: u32) -> u32 {
    var w = b;
    if (X_F16) {
        w = b << 16u;
    }
    if (w == 0x80000000u) {
        w = 0u;
    }
    var key = w | 0x80000000u;
    if ((w & 0x80000000u) != 0u) {
        key = ~w;
    }
    if (X_F16) {
        key &= 0xffff0000u;
    }
    return key;
}

// Shared helper, pasted in by `specialise`.
// #include "exclude.wgsl"

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * p.groups_x;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.n;
    let o = row * (2u + 2u * p.max_out);
    if (lid == 0u) {
        // With fewer than k candidates no level chooses a digit: these stay 0.
        digit = 0u;
        above = 0u;
        total = 0u;
        atomicStore(&n_out, 0u);
        atomicStore(&bad, 0u);
    }
    let levels = select(4u, 2u, X_F16);
    // Digits chosen so far (prefix, under mask) and how many keys are still to be passed
    // among those matching them.
    var prefix = 0u;
    var mask = 0u;
    var rest = p.k;
    var n_bad = 0u;
    for (var level = 0u; level < levels; level++) {
        let shift = 24u - 8u * level;
        atomicStore(&hist[lid], 0u);
        workgroupBarrier();
        for (var i = lid; i < p.n; i += WG) {
            let b = stored(base + i);
            let ok = finite(b);
            if (level == 0u && !ok) {
                n_bad += 1u;
            }
            let key = key_of(b);
            if (ok && (key & mask) == prefix && !excluded(i)) {
                atomicAdd(&hist[(key >> shift) & 0xffu], 1u);
            }
        }
        workgroupBarrier();
        geq[lid] = atomicLoad(&hist[lid]);
        workgroupBarrier();
        for (var off = 1u; off < BINS; off <<= 1u) {
            var s = geq[lid];
            if (lid + off < BINS) {
                s += geq[lid + off];
            }
            workgroupBarrier();
            geq[lid] = s;
            workgroupBarrier();
        }
        // The k-th largest has the digit d with geq[d] >= rest > geq[d + 1]: one bin at most.
        let hi = select(0u, geq[min(lid + 1u, BINS - 1u)], lid + 1u < BINS);
        if (geq[lid] >= rest && hi < rest) {
            digit = lid;
            above = hi;
        }
        if (level == 0u && lid == 0u) {
            total = geq[0];
        }
        workgroupBarrier();
        // Every invocation reads the same values; the next writes are barriers away.
        rest -= above;
        prefix |= digit << shift;
        mask |= 0xffu << shift;
    }
    atomicAdd(&bad, n_bad);
    // Fewer candidates than k: all of them (every finite key is above 0).
    let threshold = select(prefix, 0u, total < p.k);
    for (var i = lid; i < p.n; i += WG) {
        let b = stored(base + i);
        if (finite(b) && key_of(b) >= threshold && !excluded(i)) {
            let slot = atomicAdd(&n_out, 1u);
            if (slot < p.max_out) {
                out[o + 2u + 2u * slot] = i;
                out[o + 3u + 2u * slot] = b;
            }
        }
    }
    workgroupBarrier();
    if (lid == 0u) {
        out[o] = atomicLoad(&n_out);
        out[o + 1u] = atomicLoad(&bad);
    }
}
