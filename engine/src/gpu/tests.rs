//! Error paths of the runtime that need crate internals: a kernel that fails to compile and
//! a destroyed device must come back as `Err`, never as a panic. Skipped (with a message)
//! without an adapter unless `BLIP2_REQUIRE_GPU=1`.

use std::sync::Arc;

use blip2_shaders::{ConstValue, ElementwiseConsts, ElementwiseOp, ElementwiseParams, Kernel};

use super::{Bind, GpuContext, GpuOptions};
use crate::{DType, Device, Error, Tensor, ops};

fn open() -> Option<Arc<GpuContext>> {
    match GpuContext::with_options(GpuOptions::default()) {
        Ok(g) => Some(Arc::new(g)),
        Err(e) => {
            assert!(
                std::env::var("BLIP2_REQUIRE_GPU").as_deref() != Ok("1"),
                "BLIP2_REQUIRE_GPU=1 but no GPU adapter: {e}"
            );
            eprintln!("no GPU adapter ({e}); test not run");
            None
        }
    }
}

/// A kernel whose WGSL does not compile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Broken;

#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct BrokenParams {
    n: u32,
}

impl blip2_shaders::Params for BrokenParams {
    const FIELDS: &'static [(&'static str, &'static str)] = &[("n", "u32")];
}

impl Kernel for Broken {
    const NAME: &'static str = "broken";
    const SOURCE: &'static str = "struct Params { n: u32 }\n\
        @group(0) @binding(0) var<uniform> p: Params;\n\
        @group(0) @binding(1) var<storage, read_write> out: array<u32>;\n\
        @compute @workgroup_size(64) fn main() { out[0] = undefined_name; }\n";
    const READ_ONLY: usize = 0;
    const READ_WRITE: usize = 1;
    type Params = BrokenParams;

    fn constants(&self) -> Vec<(&'static str, ConstValue)> {
        Vec::new()
    }

    fn variants() -> Vec<Self> {
        vec![Broken]
    }
}

#[test]
fn invalid_kernel_is_an_error_and_the_device_survives() {
    let Some(g) = open() else { return };
    let out = g.alloc(64, true).unwrap();
    let err = g
        .recorder()
        .unwrap()
        .dispatch(
            &g,
            &Broken,
            &BrokenParams { n: 1 },
            &[Bind::whole(&out)],
            [1, 1, 1],
        )
        .unwrap_err();
    assert!(
        matches!(&err, Error::Gpu(m) if m.contains("broken")),
        "{err}"
    );
    // A binding past the end of its buffer is refused before wgpu sees it.
    let bad = Bind {
        s: &out,
        offset: 0,
        size: out.buf.size + 256,
    };
    let kernel = ElementwiseConsts {
        op: ElementwiseOp::Gelu,
        x_f16: false,
        b_f16: false,
        out_f16: false,
    };
    let params = ElementwiseParams {
        n: 1,
        b_len: 1,
        b_base: 0,
        s: 0.0,
        groups_x: 1,
    };
    let err = g
        .recorder()
        .unwrap()
        .dispatch(
            &g,
            &kernel,
            &params,
            &[Bind::whole(&out), Bind::whole(&out), bad],
            [1, 1, 1],
        )
        .unwrap_err();
    assert!(matches!(err, Error::Gpu(_)), "{err}");
    let dev = Device::Gpu(g.clone());
    let t = Tensor::from_f32(vec![-1.0, 2.0], &[2], &dev).unwrap();
    assert_eq!(ops::relu(&t).unwrap().to_vec_f32().unwrap(), vec![0.0, 2.0]);
}

#[test]
fn lost_device_is_an_error() {
    let Some(g) = open() else { return };
    let dev = Device::Gpu(g.clone());
    let t = Tensor::from_f32(vec![1.0; 64], &[8, 8], &dev).unwrap();
    g.synchronize().unwrap();
    g.device.destroy();
    let _ = g.device.poll(wgpu::PollType::Poll);
    // Whatever step notices first, the result is an error value.
    let r = ops::matmul(&t, &t, false).and_then(|y| y.to_vec_f32());
    assert!(r.is_err(), "ops on a destroyed device must fail");
    eprintln!("after destroy: {}", r.unwrap_err());
    assert!(
        Tensor::zeros(&[4], DType::F32, &dev)
            .and_then(|z| z.to_vec_f32())
            .is_err()
    );
}
