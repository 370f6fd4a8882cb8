//! Applying an adapter's edits to a tensor's f32 values.
//!
//! `B·A` is summed in f64 and each merged value rounded to f32 once: the result is within
//! half an f32 ulp of the exact `W + s·B·A` (peft sums `B @ A` in f32, rounding about r
//! times; the two agree to a few f32 ulps of the delta, far inside the 1e-4 parity bound).

use rayon::prelude::*;

use super::{Edit, TargetEdit};

/// Applies `edits` in order to `values` (row-major, `shape` as the model reads it); `Err`
/// names the edit whose sizes do not fit.
pub(crate) fn apply(
    values: &mut [f32],
    shape: &[usize],
    edits: &[TargetEdit],
) -> Result<(), String> {
    let n = values.len();
    for e in edits {
        match &e.edit {
            Edit::Replace { values: v } => {
                if v.len() != n {
                    return Err(format!(
                        "{} holds {} values, the model reads {shape:?}",
                        e.key,
                        v.len()
                    ));
                }
                values.copy_from_slice(v);
            }
            Edit::AddBias { b, scale } => {
                if b.len() != n {
                    return Err(format!(
                        "{} holds {} values, the model reads {shape:?}",
                        e.key,
                        b.len()
                    ));
                }
                for (w, &d) in values.iter_mut().zip(b) {
                    *w = (f64::from(*w) + scale * f64::from(d)) as f32;
                }
            }
            Edit::LowRank { a, b, rank, scale } => {
                let r = *rank;
                let (in_f, out_f) = (a.len() / r.max(1), b.len() / r.max(1));
                if r == 0 || out_f.checked_mul(in_f) != Some(n) || shape.last() != Some(&in_f) {
                    return Err(format!(
                        "{}: B·A is [{out_f}, {in_f}], the model reads {shape:?}",
                        e.key
                    ));
                }
                values
                    .par_chunks_mut(in_f)
                    .zip(b.par_chunks(r))
                    .for_each_init(
                        || vec![0f64; in_f],
                        |acc, (row, b_row)| {
                            acc.fill(0.0);
                            for (k, &bk) in b_row.iter().enumerate() {
                                let bk = f64::from(bk);
                                for (s, &x) in acc.iter_mut().zip(&a[k * in_f..(k + 1) * in_f]) {
                                    *s += bk * f64::from(x);
                                }
                            }
                            for (w, &d) in row.iter_mut().zip(acc.iter()) {
                                *w = (f64::from(*w) + scale * d) as f32;
                            }
                        },
                    );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edit(edit: Edit) -> TargetEdit {
        TargetEdit {
            adapter: 0,
            key: "k".into(),
            edit,
        }
    }

    #[test]
    fn low_rank_delta_is_scaled_b_times_a() {
        // W [2,3] = 0; A [1,3] = [1,2,3]; B [2,1] = [1,-1]; scale 0.5.
        let mut w = vec![0f32; 6];
        let e = edit(Edit::LowRank {
            a: vec![1.0, 2.0, 3.0],
            b: vec![1.0, -1.0],
            rank: 1,
            scale: 0.5,
        });
        apply(&mut w, &[2, 3], &[e]).unwrap();
        // Exact in f32: small integers and halves.
        assert_eq!(w, [0.5, 1.0, 1.5, -0.5, -1.0, -1.5]);
    }

    #[test]
    fn edits_apply_in_order_and_sizes_are_checked() {
        let mut b = vec![1f32, 2.0];
        let edits = [
            edit(Edit::Replace {
                values: vec![10.0, 20.0],
            }),
            edit(Edit::AddBias {
                b: vec![1.0, 1.0],
                scale: 2.0,
            }),
        ];
        apply(&mut b, &[2], &edits).unwrap();
        assert_eq!(b, [12.0, 22.0]);
        let bad = edit(Edit::LowRank {
            a: vec![1.0; 4],
            b: vec![1.0; 2],
            rank: 1,
            scale: 1.0,
        });
        assert!(
            apply(&mut [0f32; 6], &[2, 3], &[bad])
                .unwrap_err()
                .contains("[2, 4]")
        );
    }
}
