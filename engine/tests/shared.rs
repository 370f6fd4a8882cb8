//! f16 tensors used in place from a shared byte buffer (a memory-mapped checkpoint):
//! `Tensor::from_shared_bytes` shares only aligned f16-as-f16 data on the CPU, copies
//! everything else, and a write never reaches the buffer.

mod common;

use std::sync::Arc;

use blip2_engine::{DType, Device, SharedBytes, StoredDType, Tensor, ops};
use common::{Rng, devices};
use half::f16;

/// A buffer holding `vals` as little-endian f16 at byte `offset`, with junk around them.
fn buffer(vals: &[f16], offset: usize) -> (SharedBytes, Vec<u8>) {
    let mut buf = vec![0xEEu8; offset];
    for v in vals {
        buf.extend_from_slice(&v.to_bits().to_le_bytes());
    }
    buf.extend_from_slice(&[0xEE; 3]);
    let copy = buf.clone();
    (Arc::new(buf), copy)
}

#[test]
fn aligned_f16_is_shared_and_everything_else_is_copied() {
    let mut rng = Rng::new(5);
    let vals: Vec<f16> = rng
        .vec(6 * 7, -2.0, 2.0)
        .into_iter()
        .map(f16::from_f32)
        .collect();
    let want: Vec<f32> = vals.iter().map(|v| v.to_f32()).collect();
    let len = vals.len() * 2;
    // The Vec's allocation is at least 8-aligned, so offset 8 is aligned for f16 and 9 is not.
    for (offset, dtype, device, shared) in [
        (8, DType::F16, Device::Cpu, true),
        (9, DType::F16, Device::Cpu, false),
        (8, DType::F32, Device::Cpu, false),
    ] {
        let (owner, _) = buffer(&vals, offset);
        let t = Tensor::from_shared_bytes(
            owner.clone(),
            offset,
            len,
            StoredDType::F16,
            &[6, 7],
            dtype,
            &device,
        )
        .unwrap();
        let what = format!("offset {offset} {dtype}");
        assert_eq!(t.is_shared(), shared, "{what}");
        assert_eq!(t.dtype(), dtype, "{what}");
        assert_eq!(t.to_vec_f32().unwrap(), want, "{what}");
        // A shared tensor keeps the buffer alive on its own.
        drop(owner);
        assert_eq!(
            t.to_vec_f32().unwrap(),
            want,
            "{what} after the owner is dropped"
        );
    }
    // Every other device copies (uploads).
    for dev in devices().into_iter().filter(Device::is_gpu) {
        let (owner, _) = buffer(&vals, 8);
        let t =
            Tensor::from_shared_bytes(owner, 8, len, StoredDType::F16, &[6, 7], DType::F16, &dev)
                .unwrap();
        assert!(!t.is_shared());
        assert_eq!(t.to_vec_f32().unwrap(), want);
    }
}

#[test]
fn shared_f16_computes_like_owned_and_writes_copy_first() {
    let mut rng = Rng::new(6);
    let (n, k) = (9, 13);
    let w: Vec<f16> = rng
        .vec(n * k, -1.0, 1.0)
        .into_iter()
        .map(f16::from_f32)
        .collect();
    let (owner, before) = buffer(&w, 8);
    let shared = Tensor::from_shared_bytes(
        owner.clone(),
        8,
        w.len() * 2,
        StoredDType::F16,
        &[n, k],
        DType::F16,
        &Device::Cpu,
    )
    .unwrap();
    assert!(shared.is_shared());
    let owned = Tensor::from_f16(w.clone(), &[n, k], &Device::Cpu).unwrap();
    let x = Tensor::from_f32(rng.vec(3 * k, -1.0, 1.0), &[3, k], &Device::Cpu).unwrap();
    let a = ops::linear(&x, &shared, None)
        .unwrap()
        .to_vec_f32()
        .unwrap();
    let b = ops::linear(&x, &owned, None).unwrap().to_vec_f32().unwrap();
    assert_eq!(a, b, "same kernel, same bytes: bit-identical");

    // write_at into a shared tensor makes it owned; the buffer (a read-only file in real
    // use) is never written.
    let mut dst = shared.clone();
    let src = Tensor::from_f16(vec![f16::from_f32(7.0); k], &[1, k], &Device::Cpu).unwrap();
    ops::write_at(&mut dst, &src, 0, 2).unwrap();
    assert!(!dst.is_shared());
    let got = dst.to_vec_f32().unwrap();
    assert!(got[2 * k..3 * k].iter().all(|&v| v == 7.0));
    let first_rows: Vec<f32> = w[..2 * k].iter().map(|v| v.to_f32()).collect();
    assert_eq!(&got[..2 * k], &first_rows[..]);
    assert_eq!((*owner).as_ref(), &before[..], "buffer untouched");
    assert!(shared.is_shared(), "the other handle still shares");
}

#[test]
fn bad_ranges_and_sizes_are_errors() {
    let vals = vec![f16::ONE; 8];
    let (owner, _) = buffer(&vals, 8);
    let total = (*owner).as_ref().len();
    // Past the end, and an overflowing range.
    for (start, len) in [(total - 4, 16), (usize::MAX - 2, 16)] {
        let e = Tensor::from_shared_bytes(
            owner.clone(),
            start,
            len,
            StoredDType::F16,
            &[8],
            DType::F16,
            &Device::Cpu,
        )
        .unwrap_err();
        assert!(e.to_string().contains("outside"), "{e}");
    }
    // A length that does not match the shape is the shape error of `from_bytes`.
    let e = Tensor::from_shared_bytes(
        owner,
        8,
        14,
        StoredDType::F16,
        &[8],
        DType::F16,
        &Device::Cpu,
    )
    .unwrap_err();
    assert!(e.to_string().contains("16 expected"), "{e}");
}
