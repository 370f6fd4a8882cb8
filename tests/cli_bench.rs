//! `blip2 bench --json` reports the GPU runtime's counters per decode step (dispatches,
//! submits, bytes read back) and the language model's layer count, so that the decode
//! fusion and on-device token choice can be checked from outside (docs/performance.md).

mod common;

use blip2::engine::Device;
use blip2::engine::testing::devices;
use common::*;

fn bench_json(device: &str) -> serde_json::Value {
    let out = blip2_ok(&[
        "bench",
        "--preset",
        "tiny",
        "--device",
        device,
        "--runs",
        "1",
        "--new-tokens",
        "5",
        "--json",
    ]);
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn bench_reports_per_step_gpu_counters_and_layers() {
    let layers = blip2::model::Blip2Config::preset("tiny")
        .unwrap()
        .text_config
        .unwrap()
        .decoder_layers() as u64;
    let cpu = bench_json("cpu");
    assert_eq!(cpu["layers"].as_u64(), Some(layers));
    assert!(cpu["gpu_dispatches_per_token"].is_null(), "{cpu}");
    assert!(cpu["readback_bytes_per_token"].is_null(), "{cpu}");
    if !devices().iter().any(|d| matches!(d, Device::Gpu(_))) {
        return;
    }
    let gpu = bench_json("gpu");
    assert_eq!(gpu["layers"].as_u64(), Some(layers));
    // Issue 14: a decode step is at most 8 dispatches per layer plus a constant (the
    // embedding gathers, final norm and LM head: tests/decode_dispatches.rs), one submit,
    // and greedy reads back the token chosen on the device with its row's non-finite count
    // (8 bytes; at most 64 is the bound).
    let dispatches = gpu["gpu_dispatches_per_token"].as_u64().unwrap();
    assert!(dispatches >= layers, "{gpu}");
    assert!(dispatches <= 8 * layers + 6, "{gpu}");
    assert_eq!(gpu["gpu_submits_per_token"].as_u64(), Some(1), "{gpu}");
    let readback = gpu["readback_bytes_per_token"].as_u64().unwrap();
    assert!((4..=64).contains(&readback), "{gpu}");
}
