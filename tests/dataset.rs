//! `blip2 dataset caption` end to end with the embedded demo model on the CPU: every kind
//! of input, bad images as error rows, both formats, kill -9 and resume, several processes
//! sharding by SLURM_ARRAY_TASK_ID / JOB_COMPLETION_INDEX, and the Slurm and Kubernetes
//! examples run locally.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_blip2");

/// A fresh empty directory under the target dir (removed first if a previous run left it).
fn tmp(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("dataset-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `count` demo scenes as DIR/{seed}.png (+ DIR/scenes.jsonl with a "file" column).
fn scenes(dir: &Path, first_seed: u64, count: u64) -> Vec<PathBuf> {
    blip2::scene::write_scene_batch(dir, first_seed, count).unwrap();
    (first_seed..first_seed + count)
        .map(|s| dir.join(format!("{s}.png")))
        .collect()
}

/// The command with the shard variables of the surrounding environment removed (a test
/// run inside a Slurm job must not pick up the job's own index).
fn blip2(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(["dataset", "caption"])
        .args(args)
        .args(["--device", "cpu", "--quiet"])
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX");
    c
}

fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "status {:?}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// One output row as the tests compare it.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    id: String,
    path: String,
    text: Option<String>,
    token_ids: Vec<u32>,
    prompt: Option<String>,
    generation: String,
    error: Option<String>,
}

fn jsonl_rows(path: &Path) -> Vec<Row> {
    let s = std::fs::read_to_string(path).unwrap();
    s.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let opt = |k: &str| v[k].as_str().map(str::to_string);
            Row {
                id: opt("id").unwrap(),
                path: opt("path").unwrap(),
                text: opt("text"),
                token_ids: v["token_ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap() as u32)
                    .collect(),
                prompt: opt("prompt"),
                generation: opt("generation").unwrap(),
                error: opt("error"),
            }
        })
        .collect()
}

fn parquet_rows(path: &Path) -> Vec<Row> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::UInt32Type;
    let f = std::fs::File::open(path).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .unwrap()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    for b in reader {
        let b = b.unwrap();
        let s = |name: &str| b.column_by_name(name).unwrap().as_string::<i32>().clone();
        let (id, p, text, prompt, generation, error) = (
            s("id"),
            s("path"),
            s("text"),
            s("prompt"),
            s("generation"),
            s("error"),
        );
        let ids = b
            .column_by_name("token_ids")
            .unwrap()
            .as_list::<i32>()
            .clone();
        let opt = |a: &arrow_array::StringArray, i: usize| {
            use arrow_array::Array;
            a.is_valid(i).then(|| a.value(i).to_string())
        };
        for i in 0..b.num_rows() {
            rows.push(Row {
                id: id.value(i).to_string(),
                path: p.value(i).to_string(),
                text: opt(&text, i),
                token_ids: ids.value(i).as_primitive::<UInt32Type>().values().to_vec(),
                prompt: opt(&prompt, i),
                generation: generation.value(i).to_string(),
                error: opt(&error, i),
            });
        }
    }
    rows
}

/// Every row of every shard file in `dir` (in shard order), and the number of shard files.
fn all_rows(dir: &Path) -> (Vec<Row>, usize) {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("shard-")
                && matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("jsonl" | "parquet")
                )
        })
        .collect();
    files.sort();
    let mut rows = Vec::new();
    for f in &files {
        if f.extension().unwrap() == "jsonl" {
            rows.extend(jsonl_rows(f));
        } else {
            rows.extend(parquet_rows(f));
        }
    }
    (rows, files.len())
}

/// Asserts that `rows` hold every path of `expected` exactly once, without errors.
fn assert_each_once(rows: &[Row], expected: &[PathBuf]) {
    let mut seen = BTreeMap::new();
    for r in rows {
        *seen.entry(r.path.clone()).or_insert(0) += 1;
        assert!(r.error.is_none(), "{r:?}");
        assert!(!r.text.as_deref().unwrap_or("").is_empty(), "{r:?}");
    }
    let dup: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dup.is_empty(), "duplicated rows: {dup:?}");
    let want: BTreeSet<String> = expected.iter().map(|p| p.display().to_string()).collect();
    let got: BTreeSet<String> = seen.into_keys().collect();
    assert_eq!(got, want);
}

/// A tar holding `members` (name, bytes) in order.
fn write_tar(path: &Path, members: &[(&str, Vec<u8>)]) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (name, bytes) in members {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, bytes.as_slice()).unwrap();
    }
    b.finish().unwrap();
}

#[test]
fn every_input_kind_gives_one_row_per_item_and_bad_images_give_error_rows() {
    let d = tmp("kinds");
    // A directory tree (recursive) ...
    let mut dir_imgs = scenes(&d.join("imgs/a"), 100, 3);
    dir_imgs.extend(scenes(&d.join("imgs/b/c"), 200, 2));
    // ... a JSONL manifest (demo-scene's own scenes.jsonl, paths in its "file" column) ...
    let man = d.join("man");
    let man_imgs = scenes(&man, 300, 4);
    // ... a CSV manifest with ids and a per-row prompt ...
    std::fs::write(
        man.join("list.csv"),
        "file,id,prompt\n300.png,csv-0,\n301.png,csv-1,a picture of\n",
    )
    .unwrap();
    // ... a Parquet manifest with integer ids ...
    {
        use std::sync::Arc;
        let batch = arrow_array::RecordBatch::try_from_iter([
            (
                "file",
                Arc::new(arrow_array::StringArray::from(vec!["302.png", "303.png"]))
                    as arrow_array::ArrayRef,
            ),
            (
                "id",
                Arc::new(arrow_array::Int64Array::from(vec![7, 8])) as arrow_array::ArrayRef,
            ),
        ])
        .unwrap();
        let f = std::fs::File::create(man.join("list.parquet")).unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(f, batch.schema(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    }
    // ... two WebDataset shards named by a brace range, one sample without an image ...
    let png = |p: &Path| std::fs::read(p).unwrap();
    write_tar(
        &d.join("wds-000.tar"),
        &[
            ("s/k0.png", png(&dir_imgs[0])),
            ("s/k0.txt", b"caption".to_vec()),
            ("s/k1.seg.png", png(&dir_imgs[1])),
            ("s/k2.txt", b"no image here".to_vec()),
        ],
    );
    write_tar(
        &d.join("wds-001.tar"),
        &[("k3.jpg", b"not a jpeg".to_vec())],
    );
    // ... and bad files.
    let bad = d.join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    let good = png(&dir_imgs[0]);
    std::fs::write(bad.join("corrupt.png"), {
        let mut b = good.clone();
        for x in &mut b[40..] {
            *x = x.wrapping_mul(31).wrapping_add(7);
        }
        b
    })
    .unwrap();
    std::fs::write(bad.join("truncated.png"), &good[..good.len() / 2]).unwrap();
    std::fs::write(bad.join("text.jpg"), b"hello, I am not an image").unwrap();
    // 100x100 = 10,000 pixels, above the --max-image-pixels 5000 of the run (the scenes
    // are 64x64 = 4,096).
    blip2::image::RgbImage::new(100, 100)
        .save(bad.join("oversized.png"))
        .unwrap();

    let input_args = |dir: &Path| -> Vec<String> {
        [
            "imgs",
            "man/scenes.jsonl",
            "man/list.csv",
            "man/list.parquet",
            "wds-{000..001}.tar",
            "bad",
        ]
        .iter()
        .map(|s| dir.join(s).display().to_string())
        .collect()
    };
    let run = |format: &str, out: &Path| {
        let mut args: Vec<String> = vec!["--input".into()];
        args.extend(input_args(&d));
        args.extend(
            [
                "--output",
                out.to_str().unwrap(),
                "--format",
                format,
                "--path-column",
                "file",
                "--batch-size",
                "3",
                "--max-image-pixels",
                "5000",
            ]
            .map(String::from),
        );
        ok(blip2(&args.iter().map(String::as_str).collect::<Vec<_>>())
            .output()
            .unwrap());
    };
    let (out_j, out_p) = (d.join("out-jsonl"), d.join("out-parquet"));
    run("jsonl", &out_j);
    run("parquet", &out_p);
    let (rows, nfiles) = all_rows(&out_j);
    assert_eq!(nfiles, 1);
    let (prows, _) = all_rows(&out_p);
    // Same rows whatever the format.
    assert_eq!(rows, prows);

    let by_path: BTreeMap<&str, &Row> = rows.iter().map(|r| (r.path.as_str(), r)).collect();
    let dstr = d.display().to_string();
    // 5 directory images, 4 + 2 + 2 manifest rows, 3 + 1 tar samples, 4 bad files.
    assert_eq!(rows.len(), 5 + 8 + 4 + 4, "{rows:#?}");
    // Directory order is sorted by path; manifests keep their row order.
    let order: Vec<&str> = rows.iter().map(|r| r.path.as_str()).collect();
    let mut want_order: Vec<String> = dir_imgs.iter().map(|p| p.display().to_string()).collect();
    want_order.extend(man_imgs.iter().map(|p| p.display().to_string()));
    assert_eq!(
        order[..9],
        want_order.iter().map(String::as_str).collect::<Vec<_>>()[..]
    );

    let err = |p: String| {
        by_path
            .get(p.as_str())
            .unwrap_or_else(|| panic!("no row for {p}"))
            .error
            .clone()
            .unwrap_or_else(|| panic!("{p} should be an error row"))
    };
    assert!(err(format!("{dstr}/bad/corrupt.png")).contains("cannot"));
    assert!(err(format!("{dstr}/bad/truncated.png")).contains("cannot"));
    assert!(err(format!("{dstr}/bad/text.jpg")).contains("not a supported image format"));
    assert!(err(format!("{dstr}/bad/oversized.png")).contains("--max-image-pixels"));
    assert!(err(format!("{dstr}/wds-000.tar::s/k2")).contains("no image member"));
    assert!(err(format!("{dstr}/wds-001.tar::k3.jpg")).contains("not a supported image format"));
    let errors: Vec<_> = rows.iter().filter(|r| r.error.is_some()).collect();
    assert_eq!(errors.len(), 6, "{errors:#?}");
    for r in &errors {
        assert!(r.text.is_none() && r.token_ids.is_empty(), "{r:?}");
    }

    // Ids: files by path, manifests by their id column (else MANIFEST#ROW), tar samples by
    // TAR::KEY.
    let id = |p: &str| by_path[p].id.clone();
    assert_eq!(
        id(&format!("{dstr}/wds-000.tar::s/k1.seg.png")),
        format!("{dstr}/wds-000.tar::s/k1")
    );
    let csv_rows: Vec<_> = rows.iter().filter(|r| r.id.starts_with("csv-")).collect();
    assert_eq!(csv_rows.len(), 2);
    assert_eq!(csv_rows[0].prompt, None);
    assert_eq!(csv_rows[1].prompt.as_deref(), Some("a picture of"));
    assert!(rows.iter().any(|r| r.id == "7") && rows.iter().any(|r| r.id == "8"));
    assert!(
        rows.iter()
            .any(|r| r.id == format!("{dstr}/man/scenes.jsonl#0"))
    );

    // Every good row has the caption the image gets alone through the library (same
    // greedy tokens: exact equality, the batch runs the same kernels row by row).
    let model = blip2::demo::load_demo(blip2::LoadOptions {
        device: blip2::Device::cpu(),
        ..Default::default()
    })
    .unwrap();
    let img = blip2::load_image(&dir_imgs[0]).unwrap();
    let alone = model.caption(&img).unwrap();
    let r = by_path[dir_imgs[0].display().to_string().as_str()];
    assert_eq!(r.text.as_deref(), Some(alone.text.as_str()));
    assert_eq!(r.token_ids, alone.token_ids);
    // The tar member holds the same PNG bytes as dir_imgs[0].
    assert_eq!(
        by_path[format!("{dstr}/wds-000.tar::s/k0.png").as_str()].text,
        r.text
    );
    // One settings string in every row, and stats that count the rows.
    assert!(rows.iter().all(|x| x.generation == rows[0].generation));
    let stats: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out_j.join("shard-00000-of-00001.stats.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(stats["rows"], 21);
    assert_eq!(stats["errors"], 6);
    assert_eq!(stats["ok"], 15);

    // A rerun finds the shard complete and leaves it as it is.
    let before = std::fs::read(out_j.join("shard-00000-of-00001.jsonl")).unwrap();
    run("jsonl", &out_j);
    assert_eq!(
        std::fs::read(out_j.join("shard-00000-of-00001.jsonl")).unwrap(),
        before
    );
}

/// Reads the checkpointed row count of the single shard in `out`, if any.
fn checkpointed_rows(out: &Path) -> usize {
    std::fs::read(out.join("shard-00000-of-00001.checkpoint.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["rows"].as_u64())
        .unwrap_or(0) as usize
}

#[test]
fn killed_with_sigkill_and_restarted_gives_every_row_exactly_once() {
    let d = tmp("kill");
    let imgs = scenes(&d.join("imgs"), 5000, 300);
    let input = d.join("imgs");
    for format in ["jsonl", "parquet"] {
        let out = d.join(format!("out-{format}"));
        let args = [
            "--input",
            input.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--format",
            format,
            "--batch-size",
            "2",
            "--workers",
            "1",
        ];
        let mut child = blip2(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let t = Instant::now();
        while checkpointed_rows(&out) < 20 {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "no checkpoint after 60 s"
            );
            assert!(
                child.try_wait().unwrap().is_none(),
                "the run ended before it was killed"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        let at_kill = checkpointed_rows(&out);
        assert!(
            !out.join("shard-00000-of-00001.stats.json").exists(),
            "the shard completed before the kill ({at_kill} rows checkpointed)"
        );
        ok(blip2(&args).output().unwrap());
        let (rows, _) = all_rows(&out);
        assert_eq!(rows.len(), imgs.len());
        assert_each_once(&rows, &imgs);
        let stats: serde_json::Value = serde_json::from_slice(
            &std::fs::read(out.join("shard-00000-of-00001.stats.json")).unwrap(),
        )
        .unwrap();
        // The restart resumed at (at least) the row count seen at the kill.
        let resumed = stats["resumed_at_row"].as_u64().unwrap() as usize;
        assert!(resumed >= at_kill && resumed < imgs.len(), "{stats}");
        // The log and checkpoint are gone once the shard is complete.
        assert!(!out.join("shard-00000-of-00001.checkpoint.json").exists());
        assert!(!out.join("shard-00000-of-00001.rows.jsonl.partial").exists());
    }
}

#[test]
fn processes_indexed_by_slurm_and_kubernetes_variables_cover_every_input_once() {
    let d = tmp("procs");
    let imgs = scenes(&d.join("imgs"), 7000, 31);
    for var in ["SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX"] {
        let out = d.join(format!("out-{var}"));
        let children: Vec<_> = (0..3)
            .map(|i| {
                blip2(&[
                    "--input",
                    d.join("imgs").to_str().unwrap(),
                    "--output",
                    out.to_str().unwrap(),
                    "--num-shards",
                    "3",
                    "--format",
                    "jsonl",
                ])
                .env(var, i.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
            })
            .collect();
        for c in children {
            ok(c.wait_with_output().unwrap());
        }
        let (rows, nfiles) = all_rows(&out);
        assert_eq!(nfiles, 3);
        assert_each_once(&rows, &imgs);
        // Shard sizes differ by at most one: 10, 10, 11.
        for i in 0..3 {
            let n = jsonl_rows(&out.join(format!("shard-{i:05}-of-00003.jsonl"))).len();
            assert!(n == 10 || n == 11, "shard {i}: {n} rows");
        }
    }
    // An index that is not below --num-shards is refused, naming its source.
    let out = blip2(&[
        "--input",
        d.join("imgs").to_str().unwrap(),
        "--output",
        d.join("out-bad").to_str().unwrap(),
        "--num-shards",
        "3",
    ])
    .env("JOB_COMPLETION_INDEX", "3")
    .output()
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("JOB_COMPLETION_INDEX=3") && err.contains("--num-shards 3"),
        "{err}"
    );
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

/// Runs examples/slurm/caption.sbatch as Slurm would run each task of its array (bash, with
/// SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT set, `srun` replaced by a script that runs
/// its arguments, blip2 on the PATH), and checks the union of the shards. What it does not
/// cover: the #SBATCH resource lines and a real scheduler.
#[test]
fn slurm_example_runs_locally_for_every_array_index() {
    let script = examples().join("slurm/caption.sbatch");
    let text = std::fs::read_to_string(&script).unwrap();
    let array = text
        .lines()
        .find_map(|l| l.strip_prefix("#SBATCH --array="))
        .expect("an #SBATCH --array line");
    let (lo, hi) = array.split_once('-').expect("--array=LO-HI");
    let (lo, hi): (usize, usize) = (lo.parse().unwrap(), hi.parse().unwrap());
    assert_eq!(lo, 0, "shard indices start at 0");
    let tasks = hi + 1;
    assert!(text.contains("srun blip2 dataset caption"));

    let d = tmp("slurm");
    let imgs = scenes(&d.join("imgs"), 9000, 9);
    let bin = d.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let srun = bin.join("srun");
    std::fs::write(&srun, "#!/bin/sh\nexec \"$@\"\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&srun, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let exe_dir = Path::new(BIN).parent().unwrap();
    let path = format!(
        "{}:{}:{}",
        bin.display(),
        exe_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = d.join("out");
    for i in 0..tasks {
        ok(Command::new("bash")
            .arg(&script)
            .env("PATH", &path)
            .env("SLURM_ARRAY_TASK_ID", i.to_string())
            .env("SLURM_ARRAY_TASK_COUNT", tasks.to_string())
            .env_remove("JOB_COMPLETION_INDEX")
            .env("INPUT", d.join("imgs"))
            .env("OUTPUT", &out)
            .env("MODEL_ARGS", "--device cpu")
            .output()
            .unwrap());
    }
    let (rows, nfiles) = all_rows(&out);
    assert_eq!(nfiles, tasks);
    assert_each_once(&rows, &imgs);
}

/// Checks examples/k8s/caption-indexed-job.yaml (an Indexed Job whose completions equal
/// the command's --num-shards) and runs its container command locally once per index with
/// JOB_COMPLETION_INDEX set, the /data paths pointed at a temporary directory. What it
/// does not cover: the rest of the manifest (image, volumes, resources) and a cluster.
#[test]
fn kubernetes_example_is_an_indexed_job_whose_command_covers_every_input() {
    let text = std::fs::read_to_string(examples().join("k8s/caption-indexed-job.yaml")).unwrap();
    let value = |key: &str| -> String {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{key}:")))
            .unwrap_or_else(|| panic!("no {key}"))
            .trim()
            .to_string()
    };
    assert_eq!(value("kind"), "Job");
    assert_eq!(value("completionMode"), "Indexed");
    let completions: usize = value("completions").parse().unwrap();
    let command: Vec<String> = serde_json::from_str(&value("command")).unwrap();
    assert_eq!(command[..3], ["blip2", "dataset", "caption"]);
    let flag = |f: &str| {
        command
            .iter()
            .position(|a| a == f)
            .map(|i| command[i + 1].clone())
    };
    assert_eq!(flag("--num-shards"), Some(completions.to_string()));
    assert!(
        command.iter().all(|a| a != "--shard-index"),
        "the index comes from the Job"
    );

    let d = tmp("k8s");
    let imgs = scenes(&d.join("images"), 9100, 9);
    let local: Vec<String> = command[3..]
        .iter()
        .map(|a| a.replacen("/data", d.to_str().unwrap(), 1))
        .collect();
    for i in 0..completions {
        ok(Command::new(BIN)
            .args(["dataset", "caption"])
            .args(&local)
            .args(["--device", "cpu"])
            .env_remove("SLURM_ARRAY_TASK_ID")
            .env("JOB_COMPLETION_INDEX", i.to_string())
            .output()
            .unwrap());
    }
    let (rows, nfiles) = all_rows(&d.join("captions"));
    assert_eq!(nfiles, completions);
    assert_each_once(&rows, &imgs);
}
