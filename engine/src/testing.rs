//! Helpers shared by the test suites of every crate (not part of the stable API).

use std::sync::OnceLock;

use crate::Device;

/// The GPU device for tests, opened once per process. `None` when no adapter exists,
/// unless `BLIP2_REQUIRE_GPU=1`, in which case this panics so the test fails, not skips.
pub fn gpu() -> Option<Device> {
    static GPU: OnceLock<Option<Device>> = OnceLock::new();
    GPU.get_or_init(|| match Device::gpu() {
        Ok(d) => {
            eprintln!("GPU adapter: {:?}", d.info().name);
            Some(d)
        }
        Err(e) => {
            if std::env::var("BLIP2_REQUIRE_GPU").as_deref() == Ok("1") {
                panic!("BLIP2_REQUIRE_GPU=1 but no GPU adapter: {e}");
            }
            eprintln!("no GPU adapter ({e}); GPU cases not run");
            None
        }
    })
    .clone()
}

/// Every device to test on: the CPU, and the GPU when present.
pub fn devices() -> Vec<Device> {
    let mut v = vec![Device::cpu()];
    v.extend(gpu());
    v
}
