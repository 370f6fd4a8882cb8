// FRAGMENT, not a kernel: the fused-decode prologue and epilogue shared by gemv.wgsl and
// qgemv.wgsl (included after pack.wgsl and act.wgsl). Needs from the including kernel:
// `const NORM: u32` (0 none, 1 LayerNorm, 2 RMSNorm), `const EPI: u32` (0 none, 1
// activation, 2 gate), `const ACT: u32`, `const RESIDUAL: bool`, `const OUT_F16: bool`, the
// bindings `res` (residual words), `nw`/`nb` (norm weight and bias, f32) and `out`, and
// `p.ldo` (the output row stride).

fn ld_r(i: u32) -> f32 {
    return elem(res[word_of(i, OUT_F16)], i, OUT_F16);
}

// x row m, column c, normalised when NORM != 0 (c < k).
fn nrm(v: f32, c: u32, mean: f32, rstd: f32) -> f32 {
    if (NORM == 1u) {
        return (v - mean) * rstd * nw[c] + nb[c];
    }
    if (NORM == 2u) {
        return v * rstd * nw[c];
    }
    return v;
}

// The epilogue of one output pair (cols col, col+1 of row m): activation or gate, residual,
// store.
fn finish(m: u32, col: u32, v: vec2<f32>, two: bool) {
    if (EPI == 2u) {
        // col is even: the pair is (gate, up) of output col / 2.
        let o = m * (p.ldo / 2u) + col / 2u;
        var y = activate(ACT, v.x) * v.y;
        if (RESIDUAL) {
            y += ld_r(o);
        }
        out[o] = bitcast<u32>(y);
        return;
    }
    var y = v;
    if (EPI == 1u) {
        y = vec2<f32>(activate(ACT, v.x), activate(ACT, v.y));
    }
    let o = m * p.ldo + col;
    if (RESIDUAL) {
        y.x += ld_r(o);
        if (two) {
            y.y += ld_r(o + 1u);
        }
    }
    st_pair(o, y.x, y.y, two);
}
