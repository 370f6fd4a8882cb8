//! `blip2 info`: compute devices and what they support.

use blip2::Device;

pub fn info() -> anyhow::Result<()> {
    let adapters = blip2::engine::gpu::list_adapters();
    println!("wgpu adapters: {}", adapters.len());
    for a in &adapters {
        println!(
            "  - {} ({}, {}; driver: {})",
            a.name,
            a.backend,
            a.device_type,
            if a.driver.is_empty() { "-" } else { &a.driver }
        );
    }
    let mut devices = vec![Device::cpu()];
    match Device::gpu() {
        Ok(g) => devices.push(g),
        Err(e) => println!("gpu: none ({e})"),
    }
    for d in devices {
        let i = d.info();
        let role = if d.is_gpu() {
            "gpu (used by --device gpu)"
        } else {
            "cpu"
        };
        println!("{role}: {}", i.name);
        if d.is_gpu() {
            println!(
                "  backend: {}  driver: {}  type: {}",
                i.backend, i.driver, i.device_type
            );
        } else {
            println!("  backend: {}  type: {}", i.backend, i.device_type);
        }
        if d.is_gpu() {
            println!(
                "  shader_f16: {}  subgroups: {} ({}..{})  timestamps: {}  cooperative_matrix: {}",
                i.shader_f16,
                i.subgroups,
                i.subgroup_min_size,
                i.subgroup_max_size,
                i.timestamp_query,
                i.cooperative_matrix
            );
            println!(
                "  max_storage_buffer_binding_size: {}  max_buffer_size: {}  workgroup storage: {}  invocations/workgroup: {}",
                i.max_storage_buffer_binding_size,
                i.max_buffer_size,
                i.max_compute_workgroup_storage_size,
                i.max_compute_invocations_per_workgroup
            );
        } else {
            println!("  threads: {}", i.threads);
        }
    }
    let c = blip2::demo::DEMO_MODEL.config()?;
    let v = &c.vision_config;
    let q = &c.qformer_config;
    println!(
        "embedded demo model ({:.1} MB of f16 weights):",
        blip2::demo::DEMO_MODEL.weights.len() as f64 / 1e6
    );
    println!(
        "  vision: {}px, patch {}, hidden {}, {} layers, {} heads",
        v.image_size, v.patch_size, v.hidden_size, v.num_hidden_layers, v.num_attention_heads
    );
    println!(
        "  q-former: hidden {}, {} layers, {} heads, {} queries",
        q.hidden_size, q.num_hidden_layers, q.num_attention_heads, c.num_query_tokens
    );
    if let Some(t) = &c.text_config {
        println!("  {}", t.summary());
    }
    Ok(())
}
