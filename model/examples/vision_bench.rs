//! Times the ViT-g vision encoder alone (random weights, one 224×224 image) on the CPU:
//! `cargo run --release -p blip2-model --example vision_bench -- [f32|f16] [runs]`.
use std::time::Instant;

use blip2_engine::{DType, Device, Tensor};
use blip2_model::Blip2Config;
use blip2_model::vision::VisionModel;
use blip2_model::weights::{Checkpoint, WeightLoader};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let dtype = match args.get(1).map(String::as_str) {
        Some("f32") => DType::F32,
        Some("bf16") => DType::BF16,
        _ => DType::F16,
    };
    let runs: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(3);
    let cfg = Blip2Config::preset("opt-2.7b")?.vision_config;
    let ckpt = Checkpoint::random(0);
    let vb = WeightLoader::new(&ckpt, &Device::Cpu, dtype);
    let vm = VisionModel::load(&vb.pp("vision_model"), &cfg)?;
    let px: Vec<f32> = (0..3 * 224 * 224)
        .map(|i| ((i * 7919) % 255) as f32 / 128.0 - 1.0)
        .collect();
    let px = Tensor::from_slice(&px, &[1, 3, 224, 224], DType::F32, &Device::Cpu)?;
    for _ in 0..runs {
        let t = Instant::now();
        let y = vm.forward(&px)?;
        println!(
            "{dtype:?} vision {:.3} s {:?}",
            t.elapsed().as_secs_f64(),
            y.shape()
        );
    }
    Ok(())
}
