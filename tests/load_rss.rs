//! Loading does not keep the checkpoint's pages resident beside the loaded copy: the peak
//! resident set of a load is the loaded weights plus about one tensor, not the weights
//! twice (issue 13). Linux only (it reads /proc/self/status and resets the high-water mark
//! through /proc/self/clear_refs); its own test binary, so no other test shares the process.

#[cfg(target_os = "linux")]
mod linux {
    use std::collections::HashMap;

    use blip2::engine::{DType, Device};
    use blip2::model::{Checkpoint, WeightLoader};

    const TENSORS: usize = 24;
    const SHAPE: [usize; 2] = [1024, 4096];
    const MIB: f64 = 1024.0 * 1024.0;

    /// A `/proc/self/status` field in bytes (VmRSS, VmHWM).
    fn status(field: &str) -> u64 {
        let s = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = s.lines().find(|l| l.starts_with(field)).unwrap();
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            * 1024
    }

    /// Resets VmHWM to the current VmRSS (Linux ≥ 4.0).
    fn reset_peak() {
        std::fs::write("/proc/self/clear_refs", "5").unwrap();
    }

    /// 24 f16 tensors of 8 MiB (192 MiB): written, then dropped from this process.
    fn write_checkpoint(path: &std::path::Path) {
        let n = SHAPE[0] * SHAPE[1];
        let data: Vec<Vec<u8>> = (0..TENSORS)
            .map(|t| {
                (0..n)
                    .flat_map(|i| {
                        half::f16::from_f32(((i * 31 + t) % 97) as f32 / 97.0).to_le_bytes()
                    })
                    .collect()
            })
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView)> = data
            .iter()
            .enumerate()
            .map(|(t, d)| {
                let v = safetensors::tensor::TensorView::new(
                    safetensors::Dtype::F16,
                    SHAPE.to_vec(),
                    d,
                );
                (format!("w{t}"), v.unwrap())
            })
            .collect();
        safetensors::serialize_to_file(views, Some(HashMap::new()), path).unwrap();
    }

    /// Loads every tensor in `dtype`; returns (peak − start, resident after − start) in bytes
    /// and the loaded bytes.
    fn load(path: &std::path::Path, dtype: DType) -> (u64, u64, u64) {
        let ckpt = Checkpoint::open(path).unwrap();
        reset_peak();
        let start = status("VmRSS:");
        let vb = WeightLoader::new(&ckpt, &Device::Cpu, dtype);
        let ts: Vec<_> = (0..TENSORS)
            .map(|t| vb.get_dtype(&format!("w{t}"), &SHAPE, dtype))
            .collect();
        vb.finish().unwrap();
        let (peak, after) = (status("VmHWM:"), status("VmRSS:"));
        let loaded: u64 = ts.iter().map(|t| t.size_in_bytes() as u64).sum();
        (peak - start, after.saturating_sub(start), loaded)
    }

    /// Bound: the loaded bytes, plus the source and the converted copy of one tensor (the
    /// in-flight one: 8 MiB of f16 pages and, for f32, an 8 MiB f16 staging copy), plus
    /// 16 MiB for the allocator. Before pages were released it was 2× the weights.
    #[test]
    fn a_load_keeps_about_one_tensor_of_the_file_resident() {
        let dir = std::env::temp_dir().join(format!("blip2-load-rss-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("model.safetensors");
        write_checkpoint(&path);
        let tensor = (SHAPE[0] * SHAPE[1] * 2) as u64;
        for dtype in [DType::F16, DType::F32] {
            let (peak, after, loaded) = load(&path, dtype);
            let bound = loaded + 3 * tensor + 16 * (1 << 20);
            eprintln!(
                "{dtype}: loaded {:.0} MiB, peak +{:.0} MiB, resident after +{:.0} MiB (bound {:.0} MiB)",
                loaded as f64 / MIB,
                peak as f64 / MIB,
                after as f64 / MIB,
                bound as f64 / MIB
            );
            assert!(
                peak <= bound,
                "{dtype}: peak +{peak} B over the bound {bound} B"
            );
            assert!(
                after <= bound,
                "{dtype}: resident +{after} B over {bound} B"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
