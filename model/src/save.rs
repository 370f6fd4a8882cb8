//! `blip2 quantize`: a checkpoint directory rewritten with every tensor exactly as a
//! quantizing load produces it, so later loads map the quantized weights in place instead of
//! quantizing again. The layout is in `docs/quantization.md` ("Files on disk"):
//!
//! * a quantized tensor `name` `[.., cols]` is stored as `name`, U8 `[rows, row_bytes]` (the
//!   packed quants), and `name.qscales`, F16 `[rows, row_blocks]` (the block scales);
//! * float tensors are stored in their loaded dtype (F16 or F32);
//! * every file's `__metadata__` names the dtype and version ([`META_QUANT_DTYPE`],
//!   [`META_QUANT_VERSION`]); config.json gets a `quantization_config` object.

use std::io::Write;
use std::path::{Path, PathBuf};

use blip2_engine::{DType, Device, QFormat, Tensor};
use half::f16;

use crate::blip2::Blip2;
use crate::error::{ModelError, Result};
use crate::loading::{CheckpointFiles, Source};
use crate::retrieval::Blip2Retrieval;
use crate::weights::{
    INDEX_FILE, META_QUANT_DTYPE, META_QUANT_VERSION, QSCALES_SUFFIX, QUANT_VERSION, SINGLE_FILE,
    WeightLoader, WeightStats,
};

/// `quantization_config.quant_method` of the checkpoints written here.
pub const QUANT_METHOD: &str = "blip2";
/// Values per quantization block (`quantization_config.block_size`).
pub const BLOCK_SIZE: u64 = 32; // blip2_kernels::QBLOCK
/// Default largest safetensors file; bigger checkpoints are sharded with an index.
pub const MAX_SHARD_BYTES: u64 = 2 << 30;
/// Offset alignment of the tensor data: quant tensors come first in a file and are
/// multiples of 16 bytes, so each one starts 16-byte aligned in the map.
const DATA_ALIGN: usize = 64;

/// What to write.
#[derive(Clone, Debug)]
pub struct QuantizeOptions {
    /// Q8 or Q4.
    pub dtype: DType,
    /// Largest safetensors file before sharding ([`MAX_SHARD_BYTES`] by default).
    pub max_shard_bytes: u64,
}

impl QuantizeOptions {
    pub fn new(dtype: DType) -> QuantizeOptions {
        QuantizeOptions {
            dtype,
            max_shard_bytes: MAX_SHARD_BYTES,
        }
    }
}

/// What was written.
#[derive(Clone, Debug)]
pub struct QuantizeReport {
    /// Safetensors files (and the index when sharded), in `dst`.
    pub files: Vec<PathBuf>,
    /// Other files copied from the source directory (names).
    pub copied: Vec<String>,
    /// Tensors written, `.qscales` companions included.
    pub tensors: usize,
    /// Bytes of tensor data written.
    pub bytes: u64,
    /// The loaded model's weights (what a load of `dst` gives).
    pub stats: WeightStats,
}

/// One tensor of a file to write.
struct Entry<'a> {
    name: String,
    dtype: &'static str,
    shape: Vec<usize>,
    data: Data<'a>,
}

enum Data<'a> {
    Bytes(&'a [u8]),
    Scales(&'a [f16]),
    Float(&'a Tensor),
}

impl Entry<'_> {
    fn len(&self) -> u64 {
        match &self.data {
            Data::Bytes(b) => b.len() as u64,
            Data::Scales(s) => s.len() as u64 * 2,
            // Logical elements: a packed bf16 matrix is written unpacked (no padding).
            Data::Float(t) => (t.elem_count() * t.dtype().size_of()) as u64,
        }
    }

    /// Quants first, then 4-byte then 2-byte types, so no tensor starts misaligned.
    fn order(&self) -> u8 {
        match self.dtype {
            "U8" => 0,
            "F32" => 1,
            _ => 2,
        }
    }

    fn write(&self, w: &mut impl Write) -> std::io::Result<()> {
        match &self.data {
            Data::Bytes(b) => w.write_all(b),
            Data::Scales(s) => {
                let v: Vec<u8> = s.iter().flat_map(|x| x.to_le_bytes()).collect();
                w.write_all(&v)
            }
            Data::Float(t) => {
                let vals = t.to_vec_f32().map_err(std::io::Error::other)?;
                let bytes: Vec<u8> = match t.dtype() {
                    // f16 -> f32 -> f16 is exact.
                    DType::F16 => vals
                        .iter()
                        .flat_map(|x| f16::from_f32(*x).to_le_bytes())
                        .collect(),
                    // bf16 -> f32 -> bf16 is exact.
                    DType::BF16 => vals
                        .iter()
                        .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
                        .collect(),
                    _ => vals.iter().flat_map(|x| x.to_le_bytes()).collect(),
                };
                w.write_all(&bytes)
            }
        }
    }
}

/// The file entries of one loaded tensor (two for a quantized one).
fn entries<'a>(name: &str, t: &'a Tensor) -> Result<Vec<Entry<'a>>> {
    match t.dtype() {
        DType::F32 | DType::F16 | DType::BF16 => Ok(vec![Entry {
            name: name.to_string(),
            dtype: match t.dtype() {
                DType::F32 => "F32",
                DType::F16 => "F16",
                _ => "BF16",
            },
            shape: t.shape().to_vec(),
            data: Data::Float(t),
        }]),
        DType::Q8 | DType::Q4 => {
            let (format, qs, scales) = t.quantized_parts().ok_or_else(|| {
                ModelError::Invalid(format!("{name}: quantized tensor not on the CPU"))
            })?;
            let (&cols, lead) = t
                .shape()
                .split_last()
                .ok_or_else(|| ModelError::Invalid(format!("{name}: rank-0 quantized tensor")))?;
            let rows: usize = lead.iter().product();
            Ok(vec![
                Entry {
                    name: name.to_string(),
                    dtype: "U8",
                    shape: vec![rows, format.row_bytes(cols)],
                    data: Data::Bytes(qs),
                },
                Entry {
                    name: format!("{name}{QSCALES_SUFFIX}"),
                    dtype: "F16",
                    shape: vec![rows, QFormat::row_blocks(cols)],
                    data: Data::Scales(scales),
                },
            ])
        }
    }
}

/// Writes one safetensors file of `entries` with `metadata`.
fn write_file(path: &Path, entries: &mut [Entry], metadata: &serde_json::Value) -> Result<u64> {
    entries.sort_by(|a, b| a.order().cmp(&b.order()).then(a.name.cmp(&b.name)));
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), metadata.clone());
    let mut off = 0u64;
    for e in entries.iter() {
        let end = off + e.len();
        header.insert(
            e.name.clone(),
            serde_json::json!({"dtype": e.dtype, "shape": e.shape, "data_offsets": [off, end]}),
        );
        off = end;
    }
    let mut h = serde_json::to_vec(&header).map_err(|e| ModelError::Invalid(e.to_string()))?;
    // Spaces after the JSON are allowed and put the data start on DATA_ALIGN.
    h.resize((8 + h.len()).next_multiple_of(DATA_ALIGN) - 8, b' ');
    let file = std::fs::File::create(path).map_err(|e| ModelError::io(path, e))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    let io = |e| ModelError::io(path, e);
    w.write_all(&(h.len() as u64).to_le_bytes()).map_err(io)?;
    w.write_all(&h).map_err(io)?;
    for e in entries.iter() {
        e.write(&mut w).map_err(io)?;
    }
    w.flush().map_err(io)?;
    Ok(off)
}

/// InstructBLIP's Q-Former tokenizer lives in this subfolder of the checkpoint.
const QFORMER_TOKENIZER_DIR: &str = "qformer_tokenizer";

/// Files of a checkpoint directory other than weights and config.json that a load reads
/// (tokenizer, processor, generation settings): every `*.json`, `*.txt` and `*.model`, and
/// those of `qformer_tokenizer/` (as `qformer_tokenizer/NAME`).
fn companion_files(src: &Path) -> Result<Vec<String>> {
    let mut out = top_level_companions(src)?;
    let sub = src.join(QFORMER_TOKENIZER_DIR);
    if sub.is_dir() {
        out.extend(
            top_level_companions(&sub)?
                .into_iter()
                .map(|n| format!("{QFORMER_TOKENIZER_DIR}/{n}")),
        );
    }
    Ok(out)
}

fn top_level_companions(src: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(src).map_err(|e| ModelError::io(src, e))? {
        let e = e.map_err(|e| ModelError::io(src, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let keep = [".json", ".txt", ".model"]
            .iter()
            .any(|x| name.ends_with(x))
            && name != "config.json"
            && name != INDEX_FILE
            && e.path().is_file();
        if keep {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

/// Loads the checkpoint directory `src` on the CPU with `opts.dtype` (a BLIP-2 generation or
/// retrieval model, as its config's `architectures` says) and writes `dst` (which must not
/// exist or be empty): safetensors with every loaded tensor exactly as loaded, config.json
/// with `quantization_config`, and the tokenizer/processor/generation files.
pub fn quantize_dir(src: &Path, dst: &Path, opts: &QuantizeOptions) -> Result<QuantizeReport> {
    let dtype = opts.dtype;
    if !dtype.is_quantized() {
        return Err(ModelError::Invalid(format!(
            "quantize needs q8 or q4, not {dtype}"
        )));
    }
    if dst.exists()
        && std::fs::read_dir(dst)
            .map_err(|e| ModelError::io(dst, e))?
            .next()
            .is_some()
    {
        return Err(ModelError::Invalid(format!(
            "output directory {} exists and is not empty",
            dst.display()
        )));
    }
    let CheckpointFiles { files, checkpoint } = Source::Dir(src).open()?;
    if let Some(q) = checkpoint.quant_dtype() {
        return Err(ModelError::Unsupported(format!(
            "{} is already quantized ({q}): quantize its float original instead",
            src.display()
        )));
    }
    let vb = WeightLoader::new(&checkpoint, &Device::Cpu, dtype);
    // The model is built only for the loader to record every tensor it takes.
    if files.config.is_retrieval() {
        drop(Blip2Retrieval::build(files, &vb)?);
    } else {
        drop(Blip2::build(files, &vb)?);
    }
    vb.finish()?;
    let stats = vb.stats();
    if vb.released() > 0 {
        // Quantized weights are never stacked at load; a float load that stacked some
        // would have lost their names.
        return Err(ModelError::Invalid(format!(
            "{} tensors were stacked at load and cannot be saved by name",
            vb.released()
        )));
    }
    let loaded = vb.loaded_tensors();
    if let Some(w) = loaded.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(ModelError::Invalid(format!(
            "{} was loaded in two dtypes ({} and {}): it cannot be saved as loaded",
            w[0].0,
            w[0].1.dtype(),
            w[1].1.dtype()
        )));
    }
    // Shards of whole tensors (a quantized tensor stays with its scales), in name order.
    let mut shards: Vec<(Vec<Entry>, u64)> = vec![(Vec::new(), 0)];
    for (name, t) in &loaded {
        let es = entries(name, t)?;
        let size: u64 = es.iter().map(Entry::len).sum();
        let cur = shards.last_mut().expect("one shard at least");
        if !cur.0.is_empty() && cur.1 + size > opts.max_shard_bytes {
            shards.push((Vec::new(), 0));
        }
        let cur = shards.last_mut().expect("one shard at least");
        cur.0.extend(es);
        cur.1 += size;
    }
    std::fs::create_dir_all(dst).map_err(|e| ModelError::io(dst, e))?;
    let metadata = serde_json::json!({
        "format": "pt",
        META_QUANT_DTYPE: dtype.to_string(),
        META_QUANT_VERSION: QUANT_VERSION,
        "blip2.block_size": BLOCK_SIZE.to_string(),
    });
    let n = shards.len();
    let mut written = Vec::new();
    let mut weight_map = serde_json::Map::new();
    let (mut tensors, mut bytes) = (0usize, 0u64);
    for (i, (mut es, _)) in shards.into_iter().enumerate() {
        let file = if n == 1 {
            SINGLE_FILE.to_string()
        } else {
            format!("model-{:05}-of-{n:05}.safetensors", i + 1)
        };
        for e in &es {
            weight_map.insert(e.name.clone(), file.clone().into());
        }
        tensors += es.len();
        let path = dst.join(&file);
        bytes += write_file(&path, &mut es, &metadata)?;
        written.push(path);
    }
    if n > 1 {
        let index = serde_json::json!({
            "metadata": {"total_size": bytes, META_QUANT_DTYPE: dtype.to_string()},
            "weight_map": weight_map,
        });
        let path = dst.join(INDEX_FILE);
        write_json(&path, &index)?;
        written.push(path);
    }
    let cfg_path = src.join("config.json");
    let text =
        crate::limits::read_text_bounded(&cfg_path, crate::limits::MAX_JSON_BYTES, "config")?;
    let mut cfg: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ModelError::config(&cfg_path, "", format!("invalid JSON: {e}")))?;
    let obj = cfg
        .as_object_mut()
        .ok_or_else(|| ModelError::config(&cfg_path, "", "not a JSON object"))?;
    obj.insert(
        "quantization_config".into(),
        serde_json::json!({
            "quant_method": QUANT_METHOD,
            "dtype": dtype.to_string(),
            "block_size": BLOCK_SIZE,
            "version": 1,
        }),
    );
    write_json(&dst.join("config.json"), &cfg)?;
    let copied = companion_files(src)?;
    if copied.iter().any(|n| n.starts_with(QFORMER_TOKENIZER_DIR)) {
        let d = dst.join(QFORMER_TOKENIZER_DIR);
        std::fs::create_dir_all(&d).map_err(|e| ModelError::io(&d, e))?;
    }
    for name in &copied {
        let to = dst.join(name);
        std::fs::copy(src.join(name), &to).map_err(|e| ModelError::io(&to, e))?;
    }
    Ok(QuantizeReport {
        files: written,
        copied,
        tensors,
        bytes,
        stats,
    })
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| ModelError::Invalid(e.to_string()))?;
    std::fs::write(path, text + "\n").map_err(|e| ModelError::io(path, e))
}
