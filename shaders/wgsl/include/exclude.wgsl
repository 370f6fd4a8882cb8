// FRAGMENT, not a kernel: kernels include it with the line `// #include "exclude.wgsl"`.
// The excluded ids of the token-choice kernels (argmax.wgsl, topk.wgsl): min_new_tokens'
// eos ban, up to four ids. Needs from the including kernel: a uniform `p` whose Params has
// n_excl and e0..e3.

fn excluded(i: u32) -> bool {
    return (p.n_excl > 0u && i == p.e0) || (p.n_excl > 1u && i == p.e1)
        || (p.n_excl > 2u && i == p.e2) || (p.n_excl > 3u && i == p.e3);
}
