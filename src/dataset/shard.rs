//! Which items a shard holds, and which shard(s) this process runs.
//!
//! Shard `i` of `n` is the contiguous block `[i*len/n, (i+1)*len/n)` of the ordered item
//! list: every item is in exactly one shard, shard sizes differ by at most one, and a tar
//! shard's samples stay together in as few output shards as possible.

use std::ops::Range;

use anyhow::{bail, ensure};

/// Environment variables that name this process's shard, in the order they are tried after
/// `--shard-index`: Slurm job arrays, then Kubernetes Indexed Jobs.
pub const INDEX_VARS: [&str; 2] = ["SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX"];

/// The item range of shard `index` of `num_shards` over `len` items.
pub fn range(len: usize, num_shards: usize, index: usize) -> Range<usize> {
    let at = |i: usize| ((i as u128 * len as u128) / num_shards as u128) as usize;
    at(index)..at(index + 1)
}

/// The shards this process runs: `--shard-index`, else the first of [`INDEX_VARS`] that is
/// set, else every shard in turn (one process doing the whole job). `env` looks a
/// variable up (the process environment in the binary; a map in tests).
pub fn resolve(
    flag: Option<usize>,
    num_shards: usize,
    env: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<Vec<usize>> {
    ensure!(num_shards >= 1, "--num-shards must be at least 1");
    let (index, source) = match flag {
        Some(i) => (i, "--shard-index".to_string()),
        None => {
            let Some((var, value)) = INDEX_VARS.iter().find_map(|v| env(v).map(|x| (*v, x))) else {
                return Ok((0..num_shards).collect());
            };
            match value.trim().parse::<usize>() {
                Ok(i) => (i, format!("{var}={value}")),
                Err(_) => bail!("{var}={value:?} is not a shard index (a whole number)"),
            }
        }
    };
    ensure!(
        index < num_shards,
        "shard index {index} (from {source}) is not below --num-shards {num_shards}: shards are numbered 0..{}",
        num_shards - 1
    );
    Ok(vec![index])
}

/// The process environment's value of `var`, for [`resolve`].
pub fn process_env(var: &str) -> Option<String> {
    std::env::var(var).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_every_item_once() {
        for len in [0, 1, 7, 100, 101] {
            for n in [1, 2, 3, 7, 16] {
                let mut next = 0;
                for i in 0..n {
                    let r = range(len, n, i);
                    assert_eq!(r.start, next, "len {len} n {n} shard {i}");
                    assert!(r.len() <= len.div_ceil(n));
                    next = r.end;
                }
                assert_eq!(next, len);
            }
        }
    }

    #[test]
    fn index_from_flag_then_slurm_then_kubernetes() {
        let none = |_: &str| None;
        let slurm = |v: &str| (v == "SLURM_ARRAY_TASK_ID").then(|| "2".to_string());
        let both = |v: &str| match v {
            "SLURM_ARRAY_TASK_ID" => Some("1".to_string()),
            "JOB_COMPLETION_INDEX" => Some("3".to_string()),
            _ => None,
        };
        let k8s = |v: &str| (v == "JOB_COMPLETION_INDEX").then(|| "3".to_string());
        assert_eq!(resolve(None, 3, none).unwrap(), [0, 1, 2]);
        assert_eq!(resolve(Some(1), 3, slurm).unwrap(), [1]);
        assert_eq!(resolve(None, 3, slurm).unwrap(), [2]);
        assert_eq!(resolve(None, 4, both).unwrap(), [1]);
        assert_eq!(resolve(None, 4, k8s).unwrap(), [3]);
        let e = resolve(None, 3, k8s).unwrap_err().to_string();
        assert!(
            e.contains("JOB_COMPLETION_INDEX=3") && e.contains("--num-shards 3"),
            "{e}"
        );
        let bad = |_: &str| Some("x".to_string());
        assert!(resolve(None, 3, bad).is_err());
        assert!(resolve(Some(0), 0, none).is_err());
    }
}
