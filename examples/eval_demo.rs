//! Evaluates the embedded demo model with our engine on procedural scenes, for
//! docs/demo-model.md:
//!
//! ```sh
//! cargo run --release --example eval_demo -- 9000000 1000 [cpu|gpu] [f32|f16|q8|q4]
//! ```
//!
//! The last argument is the weight storage dtype (`--dtype` of the CLI; default f32).

use blip2::demo::{evaluate, load_demo};
use blip2::{DType, Device, LoadOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let first: u64 = args.first().map_or(Ok(9_000_000), |s| s.parse())?;
    let count: u64 = args.get(1).map_or(Ok(1000), |s| s.parse())?;
    let device = match args.get(2).map(String::as_str) {
        Some("gpu") => Device::gpu()?,
        _ => Device::cpu(),
    };
    let dtype: DType = match args.get(3) {
        Some(s) => s.parse()?,
        None => DType::F32,
    };
    let model = load_demo(LoadOptions {
        device: device.clone(),
        dtype,
        progress: None,
        adapters: Vec::new(),
    })?;
    let t = std::time::Instant::now();
    let s = evaluate(&model, first, count)?;
    println!(
        "seeds {first}..{} on {device:?}, {dtype:?}: {s} ({:.1} s)",
        first + count,
        t.elapsed().as_secs_f64()
    );
    for (seed, want, got) in &s.mistakes {
        println!("  seed {seed}: expected {want:?}, got {got:?}");
    }
    Ok(())
}
