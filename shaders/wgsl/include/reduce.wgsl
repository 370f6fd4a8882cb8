// FRAGMENT, not a kernel: kernels include it with the line `// #include "reduce.wgsl"`, which
// `blip2_shaders::specialise` replaces with this text. Reductions over the workgroup, through
// subgroup operations in the subgroup variant (`//SG` lines), never assuming a subgroup size.
// Needs from the including kernel: `const WG: u32` (invocations, a power of two) and
// `const RED_N: u32` (values each invocation reduces at once in `wg_partial_sums`; 1 for
// kernels that only use `wg_sum` / `wg_max`). `sg` is (subgroup_invocation_id, subgroup_id,
// num_subgroups), unused by the plain variant. Every invocation of the workgroup must call
// these functions together (they contain barriers).

var<workgroup> red: array<f32, RED_N * WG>;

// Sums v[a] over the workgroup for every a < RED_N in one pass: afterwards the total of v[a]
// is the sum of red[a * WG + i] over i < the returned count (one per subgroup, or 1).
fn wg_partial_sums(v: array<f32, RED_N>, lid: u32, sg: vec3<u32>) -> u32 {
    var parts = 1u;
    //SG parts = sg.z;
    //SG for (var a = 0u; a < RED_N; a++) {
    //SG     let s = subgroupAdd(v[a]);
    //SG     if (sg.x == 0u) { red[a * WG + sg.y] = s; }
    //SG }
    //SG workgroupBarrier();
    for (var a = 0u; a < RED_N; a++) { red[a * WG + lid] = v[a]; } //NOSG
    workgroupBarrier(); //NOSG
    for (var s = WG / 2u; s > 0u; s >>= 1u) { //NOSG
        if (lid < s) { //NOSG
            for (var a = 0u; a < RED_N; a++) { red[a * WG + lid] += red[a * WG + lid + s]; } //NOSG
        } //NOSG
        workgroupBarrier(); //NOSG
    } //NOSG
    return parts;
}

// Sum of v over the workgroup, returned to every invocation.
fn wg_sum(v: f32, lid: u32, sg: vec3<u32>) -> f32 {
    var vs: array<f32, RED_N>;
    vs[0] = v;
    let parts = wg_partial_sums(vs, lid, sg);
    var t = red[0];
    for (var i = 1u; i < parts; i++) {
        t += red[i];
    }
    workgroupBarrier();
    return t;
}

// Maximum of v over the workgroup, returned to every invocation.
fn wg_max(v: f32, lid: u32, sg: vec3<u32>) -> f32 {
    //SG let s = subgroupMax(v);
    //SG if (sg.x == 0u) { red[sg.y] = s; }
    //SG workgroupBarrier();
    //SG var t = red[0];
    //SG for (var i = 1u; i < sg.z; i++) { t = max(t, red[i]); }
    //SG workgroupBarrier();
    //SG return t;
    red[lid] = v; //NOSG
    workgroupBarrier(); //NOSG
    for (var s = WG / 2u; s > 0u; s >>= 1u) { //NOSG
        if (lid < s) { red[lid] = max(red[lid], red[lid + s]); } //NOSG
        workgroupBarrier(); //NOSG
    } //NOSG
    let t = red[0]; //NOSG
    workgroupBarrier(); //NOSG
    return t; //NOSG
}
