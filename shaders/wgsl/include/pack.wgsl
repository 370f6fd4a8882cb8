// FRAGMENT, not a kernel: kernels include it with the line `// #include "pack.wgsl"`, which
// `blip2_shaders::specialise` replaces with this text. Loads and stores of tensors held as raw
// 32-bit words: f32 elements are bitcast, f16 elements are packed two per word (element i is
// half i & 1 of word i >> 1). Needs from the including kernel: a read-write binding
// `out: array<u32>` and `const OUT_F16: bool` (the output's storage dtype).
// naga has no generics, so loads work on a word the kernel fetched from its own binding:
// `elem(x[word_of(i, X_F16)], i, X_F16)`.

// Index of the word that holds element i.
fn word_of(i: u32, is_f16: bool) -> u32 {
    return select(i, i >> 1u, is_f16);
}

// Value of element i, given the word that holds it.
fn elem(w: u32, i: u32, is_f16: bool) -> f32 {
    if (is_f16) {
        return unpack2x16float(w)[i & 1u];
    }
    return bitcast<f32>(w);
}

// The 8 f16 elements of one 16-byte load.
fn halves8(q: vec4<u32>) -> mat2x4<f32> {
    return mat2x4<f32>(
        vec4<f32>(unpack2x16float(q.x), unpack2x16float(q.y)),
        vec4<f32>(unpack2x16float(q.z), unpack2x16float(q.w)),
    );
}

// The first (`high` false) or last 4 f16 elements of one 16-byte load.
fn halves4(q: vec4<u32>, high: bool) -> vec4<f32> {
    if (high) {
        return vec4<f32>(unpack2x16float(q.z), unpack2x16float(q.w));
    }
    return vec4<f32>(unpack2x16float(q.x), unpack2x16float(q.y));
}

// Stores output elements i and, when `two`, i + 1. An f16 output is written a whole word at a
// time (i even; v1 fills the other half, 0 past the end), so no two invocations share a word.
fn st_pair(i: u32, v0: f32, v1: f32, two: bool) {
    if (OUT_F16) {
        out[i >> 1u] = pack2x16float(vec2<f32>(v0, v1));
    } else {
        out[i] = bitcast<u32>(v0);
        if (two) {
            out[i + 1u] = bitcast<u32>(v1);
        }
    }
}
