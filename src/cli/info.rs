//! `blip2 info`: compute devices and what they support.

use blip2::Device;

pub fn info() -> anyhow::Result<()> {
    let mut devices = vec![Device::cpu()];
    match Device::gpu() {
        Ok(g) => devices.push(g),
        Err(e) => println!("gpu: none ({e})"),
    }
    for d in devices {
        let i = d.info();
        println!("{}: {}", if d.is_gpu() { "gpu" } else { "cpu" }, i.name);
        println!(
            "  backend: {}  driver: {}  type: {}",
            i.backend, i.driver, i.device_type
        );
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
    Ok(())
}
