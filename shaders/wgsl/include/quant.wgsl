// FRAGMENT, not a kernel: kernels include it with the line `// #include "quant.wgsl"`, which
// `blip2_shaders::specialise` replaces with this text. Dequantization of block-quantized
// weights (layout: kernels/src/quant.rs) with integer ops, exact for every value. Needs from
// the including kernel: `qs: array<u32>` (the quants as little-endian words, row r from word
// r * rb * (Q4 ? 4 : 8)), `sc: array<u32>` (the f16 scales two per word, low half first,
// scale h = row * rb + block) and `const Q4: bool` (false: q8).
// A unit is 8 values of one block, 4 units per block: unit c of a row covers block c / 4.
// q8: its words 2c, 2c + 1 hold values 8u..8u+8 (u = c % 4) as bytes. q4: its word c holds
// values 4u..4u+4 in the low nibbles and 16+4u..16+4u+4 in the high nibbles.

// Scale h as f32.
fn block_scale(h: u32) -> f32 {
    return unpack2x16float(sc[h >> 1u])[h & 1u];
}

// The 4 signed bytes of w, in byte order.
fn sbytes(w: u32) -> vec4<f32> {
    // Shift each byte to the top, then an arithmetic shift sign-extends it.
    let v = bitcast<vec4<i32>>(vec4<u32>(w) << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u);
    return vec4<f32>(v);
}

// The 4 nibbles of w from bit `first` on, 8 bits apart, minus 8.
fn nibbles(w: u32, first: u32) -> vec4<f32> {
    let shifts = vec4<u32>(first, first + 8u, first + 16u, first + 24u);
    let v = vec4<i32>((vec4<u32>(w) >> shifts) & vec4<u32>(15u)) - vec4<i32>(8);
    return vec4<f32>(v);
}

// Unscaled values of unit c of row `row` (rb blocks per row): [0] the first quad of columns,
// [1] the second (q8: the next 4 columns, q4: 16 columns on).
fn unit_quads(row: u32, rb: u32, c: u32) -> mat2x4<f32> {
    if (Q4) {
        let w = qs[row * rb * 4u + c];
        return mat2x4<f32>(nibbles(w, 0u), nibbles(w, 4u));
    }
    let i = row * rb * 8u + 2u * c;
    return mat2x4<f32>(sbytes(qs[i]), sbytes(qs[i + 1u]));
}
