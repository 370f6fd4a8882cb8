//! Memory-mapped safetensors checkpoints and a prefix builder that checks every tensor.
//!
//! ```text
//! let ckpt = Checkpoint::open(dir)?;
//! let vb = WeightLoader::new(&ckpt, &device, DType::F16);
//! let fc1 = vb.pp("vision_model").pp("encoder").get("layers.0.mlp.fc1.weight", &[6144, 1408]);
//! // ... build the whole model, then:
//! vb.finish()?; // one error listing every missing / mismatched tensor
//! ```
//!
//! Dtype policy, in one place ([`WeightLoader::get_linear`], [`WeightLoader::get_embedding`]
//! and `policy_dtype`):
//! * linear-layer weights (every `nn::Linear`) and the token-embedding tables of the language
//!   models (which are, or may be tied to, the LM head) are stored in the loader's dtype:
//!   f32, f16, or quantized (q8/q4) when the loader's dtype is quantized; a bf16 loader
//!   packs the linear weights to bf16 (CPU only) and keeps the embedding tables and LM heads
//!   in f16;
//! * other matrices and higher-rank tensors ([`WeightLoader::get`]: position embeddings, the
//!   patch-embedding conv, the Q-Former's word embeddings) in the loader's dtype, except that
//!   a packed (q8/q4/bf16) loader keeps them in f16 (they are small, and read by ops that
//!   take floats);
//! * vectors (biases, norm weights) always in f32, which the engine's ops expect and which
//!   costs nothing. [`WeightLoader::get_f32`] forces f32 (query tokens, position and class
//!   embeddings).
//!
//! Stored F32/F16/BF16 are converted by the engine. A checkpoint written by `blip2 quantize`
//! (see [`crate::save`]) holds those quantizable weights already quantized: those are used in place from
//! the memory map, whatever the loader's dtype (the saved format wins).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use blip2_engine::{DType, Device, QFormat, QuantBytes, SharedBytes, StoredDType, Tensor};
use memmap2::Mmap;
use safetensors::tensor::{Metadata, SafeTensorError, TensorInfo};
use safetensors::{Dtype, SafeTensors};

use crate::adapters::{AdapterStats, Adapters, TargetEdit};
use crate::error::{MAX_WEIGHT_PROBLEMS, ModelError, Result, WeightProblem, WeightProblems};

pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// Companion of a quantized tensor `name`: `name.qscales`, its F16 block scales.
pub const QSCALES_SUFFIX: &str = ".qscales";
/// `__metadata__` key naming the quantized dtype of a file written by `blip2 quantize`.
pub const META_QUANT_DTYPE: &str = "blip2.quant_dtype";
/// `__metadata__` key of the format version of such a file.
pub const META_QUANT_VERSION: &str = "blip2.quant_version";
/// The only version written and read.
pub const QUANT_VERSION: &str = "1";

/// Bytes of one safetensors file: memory-mapped from disk, or embedded in the binary.
// `Arc` so quantized tensors can keep using the mapped bytes after the checkpoint is dropped.
enum ShardData {
    Mapped(Arc<Mmap>),
    Static(&'static [u8]),
    Owned(Arc<Vec<u8>>),
}

impl ShardData {
    /// The whole buffer, for tensors that use their bytes in place.
    fn owner(&self) -> SharedBytes {
        match self {
            ShardData::Mapped(m) => m.clone(),
            ShardData::Static(b) => Arc::new(*b),
            ShardData::Owned(b) => b.clone(),
        }
    }
}

impl std::ops::Deref for ShardData {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            ShardData::Mapped(m) => m,
            ShardData::Static(b) => b,
            ShardData::Owned(b) => b,
        }
    }
}

struct Shard {
    path: PathBuf,
    mmap: ShardData,
    /// Offset of the tensor data (8 + header length).
    data_start: usize,
    meta: Metadata,
    /// `__metadata__` [`META_QUANT_DTYPE`] of a file written by `blip2 quantize`.
    quant: Option<DType>,
}

/// One or more safetensors files, memory-mapped, with their headers validated.
pub struct Checkpoint {
    path: PathBuf,
    shards: Vec<Shard>,
    /// Tensor name -> shard index.
    names: HashMap<String, usize>,
    total_bytes: u64,
    /// Seed of a random-weight checkpoint (benchmarks): every name exists, with the shape
    /// the model asks for.
    random: Option<u64>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("path", &self.path)
            .field("files", &self.shards.len())
            .field("tensors", &self.names.len())
            .field("total_bytes", &self.total_bytes)
            .finish()
    }
}

/// What the header says about one tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorMeta<'a> {
    pub dtype: Dtype,
    pub shape: &'a [usize],
    pub file: &'a Path,
}

fn stored_dtype(d: Dtype) -> Option<StoredDType> {
    match d {
        Dtype::F32 => Some(StoredDType::F32),
        Dtype::F16 => Some(StoredDType::F16),
        Dtype::BF16 => Some(StoredDType::BF16),
        _ => None,
    }
}

/// The largest end offset the header declares (for a helpful "truncated" message).
fn declared_data_len(header: &[u8]) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(header).ok()?;
    v.as_object()?
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .filter_map(|(_, t)| t.get("data_offsets")?.get(1)?.as_u64())
        .max()
}

/// The first tensor whose offsets or size the header gets wrong, named, with what was
/// expected: the same checks as `safetensors`' validation, whose errors name no tensor
/// (sizes) or give no numbers (offsets).
fn header_problem(header: &[u8]) -> Option<String> {
    let map: BTreeMap<String, serde_json::Value> = serde_json::from_slice(header).ok()?;
    let mut infos: Vec<(String, TensorInfo)> = map
        .into_iter()
        .filter(|(k, _)| k != "__metadata__")
        .filter_map(|(k, v)| Some((k, serde_json::from_value(v).ok()?)))
        .collect();
    infos.sort_by_key(|(_, i)| i.data_offsets);
    let mut start = 0;
    for (name, i) in &infos {
        let (s, e) = i.data_offsets;
        if e < s {
            return Some(format!(
                "tensor {name}: data_offsets [{s}, {e}] end before they start"
            ));
        }
        if s != start {
            let how = if s > start {
                "leaving a gap"
            } else {
                "overlapping it"
            };
            return Some(format!(
                "tensor {name}: data_offsets [{s}, {e}] start at {s}, but the tensor before it ends at {start} ({how}; tensor data must be contiguous)"
            ));
        }
        start = e;
        let (dtype, shape) = (i.dtype, &i.shape);
        let Some(bits) = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .and_then(|n| n.checked_mul(dtype.bitsize()))
        else {
            return Some(format!(
                "tensor {name}: shape {shape:?} of {dtype:?} overflows the address space"
            ));
        };
        if bits % 8 != 0 {
            return Some(format!(
                "tensor {name}: shape {shape:?} of {dtype:?} is {bits} bits, not a whole number of bytes"
            ));
        }
        if e - s != bits / 8 {
            return Some(format!(
                "tensor {name}: {dtype:?} of shape {shape:?} needs {} bytes, but data_offsets [{s}, {e}] hold {}",
                bits / 8,
                e - s
            ));
        }
    }
    None
}

fn open_shard(path: &Path) -> Result<Shard> {
    let file = File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ModelError::checkpoint(path, "file not found")
        } else {
            ModelError::io(path, e)
        }
    })?;
    let len = file.metadata().map_err(|e| ModelError::io(path, e))?.len();
    if len < 8 {
        return Err(ModelError::checkpoint(
            path,
            format!("truncated: {len} bytes, shorter than the 8-byte safetensors header length"),
        ));
    }
    // SAFETY: the map is read-only. Its length is the file's length at open time and
    // `read_metadata` below checks that the header's offsets cover exactly that length, so
    // no tensor slice points past the end of the file. (A file truncated by another process
    // while mapped can still fault; nothing in a process can prevent that.)
    let mmap = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
    parse_shard(path, ShardData::Mapped(Arc::new(mmap)))
}

/// Validates a safetensors header against the data it describes.
fn parse_shard(path: &Path, mmap: ShardData) -> Result<Shard> {
    let len = mmap.len() as u64;
    if len < 8 {
        return Err(ModelError::checkpoint(
            path,
            format!("truncated: {len} bytes, shorter than the 8-byte safetensors header length"),
        ));
    }
    let mut n_bytes = [0u8; 8];
    n_bytes.copy_from_slice(&mmap[..8]);
    let n = u64::from_le_bytes(n_bytes);
    let (header_len, meta) = SafeTensors::read_metadata(&mmap).map_err(|e| {
        // The JSON header (empty where the length field overruns the file).
        let header = || mmap.get(8..8usize.saturating_add(n as usize)).unwrap_or(&[]);
        let msg = match e {
            SafeTensorError::InvalidHeaderLength => format!(
                "truncated or not a safetensors file: its first 8 bytes declare a JSON header of {n} bytes, but only {} bytes follow them",
                len - 8
            ),
            SafeTensorError::MetadataIncompleteBuffer => match declared_data_len(header()) {
                Some(d) => {
                    let declared = 8 + n + d;
                    let diff = if declared > len {
                        format!("{} bytes missing: truncated", declared - len)
                    } else {
                        format!("{} unexpected bytes after the last tensor", len - declared)
                    };
                    format!(
                        "corrupt: the header's tensors end at byte {declared} but the file has {len} bytes ({diff})"
                    )
                }
                None => format!("the header's offsets do not match the file size {len}"),
            },
            SafeTensorError::HeaderTooLarge => format!("not a safetensors file: header length {n} is implausible"),
            SafeTensorError::InvalidOffset(_)
            | SafeTensorError::TensorInvalidInfo
            | SafeTensorError::MisalignedSlice
            | SafeTensorError::ValidationOverflow => {
                let why = header_problem(header()).unwrap_or_else(|| e.to_string());
                format!("corrupt safetensors header: {why}")
            }
            SafeTensorError::InvalidHeader(_) | SafeTensorError::InvalidHeaderDeserialization(_) => {
                format!("corrupt safetensors header: {e}")
            }
            other => format!("invalid safetensors file: {other}"),
        };
        ModelError::checkpoint(path, msg)
    })?;
    let quant = quant_metadata(path, &meta)?;
    Ok(Shard {
        path: path.to_path_buf(),
        mmap,
        data_start: 8 + header_len,
        meta,
        quant,
    })
}

/// The quantized dtype a file declares in its `__metadata__`, checked.
fn quant_metadata(path: &Path, meta: &Metadata) -> Result<Option<DType>> {
    let Some(m) = meta.metadata() else {
        return Ok(None);
    };
    let Some(d) = m.get(META_QUANT_DTYPE) else {
        return Ok(None);
    };
    let version = m.get(META_QUANT_VERSION).map(String::as_str);
    if version != Some(QUANT_VERSION) {
        return Err(ModelError::checkpoint(
            path,
            format!(
                "__metadata__ {META_QUANT_VERSION} is {version:?}, this build reads version {QUANT_VERSION}"
            ),
        ));
    }
    match d.parse::<DType>() {
        Ok(q) if q.is_quantized() => Ok(Some(q)),
        _ => Err(ModelError::checkpoint(
            path,
            format!("__metadata__ {META_QUANT_DTYPE} is '{d}', expected q8 or q4"),
        )),
    }
}

impl Checkpoint {
    /// Opens `dir/model.safetensors.index.json` (sharded) or `dir/model.safetensors`.
    /// A path to a `.safetensors` file is opened as a single-file checkpoint.
    pub fn open(path: impl AsRef<Path>) -> Result<Checkpoint> {
        let path = path.as_ref();
        if path.is_file() {
            return Self::from_files(path, &[path.to_path_buf()]);
        }
        if !path.is_dir() {
            return Err(ModelError::checkpoint(path, "no such file or directory"));
        }
        let index = path.join(INDEX_FILE);
        if index.is_file() {
            return Self::open_index(&index);
        }
        let single = path.join(SINGLE_FILE);
        if single.is_file() {
            return Self::from_files(path, &[single]);
        }
        // An entry of the right name that is not a file (a directory, a FIFO, a symlink
        // loop) is named rather than reported as absent.
        for name in [SINGLE_FILE, INDEX_FILE] {
            if let Some(kind) = crate::limits::non_file_entry(&path.join(name)) {
                return Err(ModelError::checkpoint(
                    path,
                    format!("{name} is {kind}, not a regular file"),
                ));
            }
        }
        let hint = if path.join("pytorch_model.bin").exists()
            || path.join("pytorch_model.bin.index.json").exists()
        {
            " (PyTorch .bin checkpoints are not supported: convert them to safetensors)"
        } else {
            ""
        };
        Err(ModelError::checkpoint(
            path,
            format!("neither {SINGLE_FILE} nor {INDEX_FILE} found{hint}"),
        ))
    }

    /// Opens the shards listed in a `model.safetensors.index.json`.
    pub fn open_index(index: &Path) -> Result<Checkpoint> {
        let text =
            crate::limits::read_text_bounded(index, crate::limits::MAX_JSON_BYTES, "shard index")?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::config(index, "", format!("invalid JSON: {e}")))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| {
                ModelError::config(
                    index,
                    "weight_map",
                    "missing, or not an object of name -> file",
                )
            })?;
        let dir = index.parent().unwrap_or(Path::new("."));
        // Shard files sorted by name (model-00001-of-0000N first): deterministic order.
        let mut files: BTreeMap<&str, usize> = BTreeMap::new();
        for (name, f) in map {
            let f = f.as_str().ok_or_else(|| {
                ModelError::config(index, format!("weight_map.{name}"), "expected a file name")
            })?;
            // Shards sit beside the index: a name with `..`, a root or a drive would read
            // files outside the model directory. (Symlinks inside it, as the Hugging Face
            // cache makes, are followed.)
            if !Path::new(f)
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)))
            {
                return Err(ModelError::config(
                    index,
                    format!("weight_map.{name}"),
                    format!(
                        "shard file '{f}' is not a plain file name inside the model directory (no '..', no absolute path)"
                    ),
                ));
            }
            *files.entry(f).or_default() += 1;
        }
        let mut missing = Vec::new();
        for (f, count) in &files {
            if !dir.join(f).is_file() {
                missing.push(format!("{f} ({count} tensors)"));
            }
        }
        if !missing.is_empty() {
            return Err(ModelError::checkpoint(
                index,
                format!(
                    "shard file(s) listed in the index are missing: {}",
                    missing.join(", ")
                ),
            ));
        }
        let paths: Vec<PathBuf> = files.keys().map(|f| dir.join(f)).collect();
        let ckpt = Self::from_files(dir, &paths)?;
        // An index naming a tensor its shard does not hold means a broken download.
        let mut absent: Vec<&str> = map
            .keys()
            .filter(|n| !ckpt.names.contains_key(n.as_str()))
            .map(String::as_str)
            .collect();
        if !absent.is_empty() {
            absent.sort_unstable();
            let shown: Vec<&str> = absent.iter().take(20).copied().collect();
            return Err(ModelError::checkpoint(
                index,
                format!(
                    "{} tensor(s) listed in the index are not in their shard: {}{}",
                    absent.len(),
                    shown.join(", "),
                    if absent.len() > shown.len() {
                        ", ..."
                    } else {
                        ""
                    }
                ),
            ));
        }
        Ok(ckpt)
    }

    fn from_files(path: &Path, files: &[PathBuf]) -> Result<Checkpoint> {
        let shards = files
            .iter()
            .map(|f| open_shard(f))
            .collect::<Result<Vec<_>>>()?;
        // One quantized dtype per checkpoint: shards of two `blip2 quantize` runs mixed up
        // would otherwise load half q8, half q4.
        let mut declared = shards.iter().filter_map(|s| s.quant.map(|q| (q, &s.path)));
        if let Some((q, first)) = declared.next()
            && let Some((other, file)) = declared.find(|(d, _)| *d != q)
        {
            return Err(ModelError::checkpoint(
                file,
                format!(
                    "declares {other} quantization but {} declares {q}",
                    first.display()
                ),
            ));
        }
        Ok(Self::from_shards(path, shards))
    }

    fn from_shards(path: &Path, shards: Vec<Shard>) -> Checkpoint {
        let mut names = HashMap::new();
        let mut total_bytes = 0u64;
        for (i, shard) in shards.iter().enumerate() {
            for name in shard.meta.offset_keys() {
                if let Some(info) = shard.meta.info(&name) {
                    total_bytes += (info.data_offsets.1 - info.data_offsets.0) as u64;
                }
                names.entry(name).or_insert(i);
            }
        }
        Checkpoint {
            path: path.to_path_buf(),
            shards,
            names,
            total_bytes,
            random: None,
        }
    }

    /// A single-file checkpoint embedded in the binary (`include_bytes!`); `name` is used in
    /// messages.
    pub fn from_static(name: &str, bytes: &'static [u8]) -> Result<Checkpoint> {
        let path = PathBuf::from(name);
        let shard = parse_shard(&path, ShardData::Static(bytes))?;
        Ok(Self::from_shards(&path, vec![shard]))
    }

    /// A single-file checkpoint held in memory (bytes received or built at run time; the
    /// fuzz targets); `name` is used in messages.
    pub fn from_bytes(name: &str, bytes: Vec<u8>) -> Result<Checkpoint> {
        let path = PathBuf::from(name);
        let shard = parse_shard(&path, ShardData::Owned(Arc::new(bytes)))?;
        Ok(Self::from_shards(&path, vec![shard]))
    }

    /// A checkpoint of seeded random weights for benchmarks at real model sizes: every
    /// tensor the model asks for exists with the requested shape. Norm weights are 1,
    /// everything else uniform with std 0.02 (keeps activations finite in f16).
    pub fn random(seed: u64) -> Checkpoint {
        Checkpoint {
            path: PathBuf::from(format!("<random weights, seed {seed}>")),
            shards: Vec::new(),
            names: HashMap::new(),
            total_bytes: 0,
            random: Some(seed),
        }
    }

    /// Whether this is a checkpoint of seeded random weights ([`Self::random`]).
    pub fn is_random(&self) -> bool {
        self.random.is_some()
    }

    /// The directory (or file) this checkpoint was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn files(&self) -> Vec<&Path> {
        self.shards.iter().map(|s| s.path.as_path()).collect()
    }

    /// Sum of the stored tensor bytes (the denominator of the progress callback).
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.random.is_some() || self.names.contains_key(name)
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.names.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    pub fn meta(&self, name: &str) -> Option<TensorMeta<'_>> {
        let shard = &self.shards[*self.names.get(name)?];
        let info = shard.meta.info(name)?;
        Some(TensorMeta {
            dtype: info.dtype,
            shape: &info.shape,
            file: &shard.path,
        })
    }

    /// The raw little-endian bytes of a tensor (a view into the mapped file).
    pub fn raw(&self, name: &str) -> Option<&[u8]> {
        let shard = &self.shards[*self.names.get(name)?];
        let info = shard.meta.info(name)?;
        let (s, e) = info.data_offsets;
        shard.mmap.get(shard.data_start + s..shard.data_start + e)
    }

    /// The mapping holding `name` and the page range of its bytes: the pages lying wholly
    /// inside (`outward` false) or every page it touches (`outward` true). `None` for an
    /// embedded checkpoint or an empty range.
    #[cfg(unix)]
    fn pages(&self, name: &str, outward: bool) -> Option<(&Mmap, usize, usize)> {
        let shard = &self.shards[*self.names.get(name)?];
        let ShardData::Mapped(map) = &shard.mmap else {
            return None;
        };
        let (s, e) = shard.meta.info(name)?.data_offsets;
        let (s, e) = (shard.data_start + s, shard.data_start + e);
        let page = 4096;
        let (start, end) = if outward {
            (s / page * page, e.div_ceil(page) * page)
        } else {
            (s.div_ceil(page) * page, e / page * page)
        };
        let end = end.min(map.len());
        (end > start).then(|| (&**map, start, end - start))
    }

    /// Drops the mapped pages that lie wholly inside `name`'s bytes from this process's
    /// resident set, once the loader holds its own converted copy: without it a load kept
    /// both the copy and the file's pages resident (twice the weights at peak). The pages
    /// stay in the page cache, so a later load is still warm. Best effort: embedded
    /// checkpoints and non-Unix systems keep their pages.
    fn release(&self, name: &str) {
        #[cfg(unix)]
        if let Some((map, start, len)) = self.pages(name, false) {
            // SAFETY: the map is a read-only MAP_SHARED mapping of the file: MADV_DONTNEED
            // only unmaps the pages, and any later read faults the same file bytes back in
            // (it never sees zero-filled or stale memory, unlike a private mapping).
            let _ = unsafe {
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, len)
            };
        }
        #[cfg(not(unix))]
        let _ = name;
    }

    /// Maps in every page of `name`, for a tensor used in place: the load, not the first
    /// inference, pays for reading the file (from the page cache when warm, else from
    /// disk), and the first matmuls run without page faults. Best effort (Linux ≥ 5.14's
    /// MADV_POPULATE_READ; elsewhere pages fault in on first use).
    fn populate(&self, name: &str) {
        #[cfg(target_os = "linux")]
        if let Some((map, start, len)) = self.pages(name, true) {
            let _ = map.advise_range(memmap2::Advice::PopulateRead, start, len);
        }
        #[cfg(not(target_os = "linux"))]
        let _ = name;
    }

    /// The quantized dtype of a checkpoint written by `blip2 quantize` (its files'
    /// `__metadata__`), `None` for a float checkpoint.
    pub fn quant_dtype(&self) -> Option<DType> {
        self.shards.iter().find_map(|s| s.quant)
    }

    /// The quantized dtype declared by the file holding `name`.
    fn quant_of(&self, name: &str) -> Option<DType> {
        self.shards[*self.names.get(name)?].quant
    }

    /// Where the bytes of `name` lie: its file's buffer, the offset and the length (checked
    /// to lie inside the buffer), for use in place (no copy).
    fn located(&self, name: &str) -> Option<(SharedBytes, usize, usize)> {
        let shard = &self.shards[*self.names.get(name)?];
        let (s, e) = shard.meta.info(name)?.data_offsets;
        let start = shard.data_start.checked_add(s)?;
        let len = e.checked_sub(s)?;
        (start.checked_add(len)? <= shard.mmap.len()).then(|| (shard.mmap.owner(), start, len))
    }

    /// The bytes of `name`, shared in place from the map (no copy).
    fn shared(&self, name: &str) -> Option<QuantBytes> {
        let (owner, start, len) = self.located(name)?;
        Some(QuantBytes::Shared { owner, start, len })
    }

    /// How many tensors are stored in each dtype ("F32" -> 120, ...).
    pub fn dtype_counts(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for name in self.names.keys() {
            if let Some(m) = self.meta(name) {
                *out.entry(format!("{:?}", m.dtype)).or_insert(0) += 1;
            }
        }
        out
    }
}

type Progress<'a> = Arc<dyn Fn(u64, u64) + Send + Sync + 'a>;

#[derive(Default)]
struct LoadState {
    problems: Vec<WeightProblem>,
    /// The text of each kept problem, to keep it once.
    problem_texts: HashSet<String>,
    /// Problems beyond [`MAX_WEIGHT_PROBLEMS`], counted only.
    problems_more: usize,
    used: HashSet<String>,
    cache: HashMap<(String, DType), Tensor>,
    /// Tensors the model took into a stacked matrix, dropped from `cache` then
    /// ([`WeightLoader::release`]): name, dtype and bytes, for [`WeightStats`].
    released: Vec<(String, DType, u64)>,
    bytes_done: u64,
    /// Names loaded through [`WeightLoader::get_linear`] and [`WeightLoader::get_embedding`]
    /// (for [`WeightStats`]).
    linear: HashSet<String>,
    /// Quantized tensors taken in place from a pre-quantized file.
    prequantized: usize,
    /// Tensors quantized while loading (from float data).
    quantized_at_load: usize,
    /// Checkpoint names an adapter edited (merged) so far.
    adapted: HashSet<String>,
}

/// What a model's loaded weights occupy, from every tensor the loader produced (a tied
/// weight counts once).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WeightStats {
    pub tensors: usize,
    /// Exact storage bytes ([`Tensor::size_in_bytes`]), scales included.
    pub bytes: u64,
    /// Bytes per storage dtype ("q4" -> .., "f16" -> .., "f32" -> ..).
    pub bytes_by_dtype: BTreeMap<String, u64>,
    /// The tensors `--dtype` quantizes, linear-layer weights and token-embedding tables
    /// ([`WeightLoader::get_linear`], [`WeightLoader::get_embedding`]): count, bytes, and
    /// their dtype ("mixed" if they differ, "" when there are none).
    pub linear_weights: usize,
    pub linear_bytes: u64,
    pub linear_dtype: String,
    /// Quantized tensors used in place from a `blip2 quantize` file (never re-quantized).
    pub prequantized: usize,
    /// Tensors quantized from float data while loading.
    pub quantized_at_load: usize,
    /// Float tensors used in place from the mapped checkpoint (f16 loaded as f16 on the CPU),
    /// neither copied nor packed (`BLIP2_CPU_PACK=all` packs them: docs/cpu.md).
    pub mapped: usize,
    /// The PEFT adapters merged into these weights, in order.
    pub adapters: Vec<AdapterStats>,
}

impl WeightStats {
    /// The weights' dtype as a user would name it: the linear weights' dtype (what
    /// `--dtype` chooses), or the single dtype of all matrices for a model without linears.
    pub fn weight_dtype(&self) -> &str {
        &self.linear_dtype
    }

    /// A JSON object of these numbers (for `--json` outputs).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "weight_dtype": self.linear_dtype,
            "tensors": self.tensors,
            "bytes": self.bytes,
            "bytes_by_dtype": self.bytes_by_dtype,
            "linear_weights": self.linear_weights,
            "linear_bytes": self.linear_bytes,
            "prequantized": self.prequantized,
            "quantized_at_load": self.quantized_at_load,
            "mapped": self.mapped,
            "adapters": self.adapters.iter().map(|a| serde_json::json!({
                "dir": a.dir.display().to_string(),
                "scale": a.scale,
                "merged_matrices": a.merged,
                "bias_deltas": a.bias_deltas,
                "replaced_tensors": a.replaced,
            })).collect::<Vec<_>>(),
        })
    }
}

/// Prefix builder over a [`Checkpoint`]: shape-checked gets that record problems instead of
/// failing, so a whole model can be built and every problem reported by [`Self::finish`].
/// Clones and `pp` children share the record.
#[derive(Clone)]
pub struct WeightLoader<'a> {
    ckpt: &'a Checkpoint,
    device: Device,
    dtype: DType,
    prefix: String,
    state: Arc<Mutex<LoadState>>,
    progress: Option<Progress<'a>>,
    adapters: Option<Arc<Adapters>>,
}

impl<'a> WeightLoader<'a> {
    /// `dtype` is the storage dtype of matrices (see the module doc for the policy).
    pub fn new(ckpt: &'a Checkpoint, device: &Device, dtype: DType) -> WeightLoader<'a> {
        WeightLoader {
            ckpt,
            device: device.clone(),
            dtype,
            prefix: String::new(),
            state: Arc::new(Mutex::new(LoadState::default())),
            progress: None,
            adapters: None,
        }
    }

    /// Merges `adapters` (checked against this loader's checkpoint by [`Adapters::open`])
    /// into the tensors they edit as those are loaded, in f32 before any conversion.
    pub fn with_adapters(mut self, adapters: Arc<Adapters>) -> Self {
        self.adapters = Some(adapters).filter(|a| !a.is_empty());
        self
    }

    /// Calls `f(bytes_done, bytes_total)` after each tensor is loaded; `bytes_total` is
    /// [`Checkpoint::total_bytes`] (tensors never requested are never counted as done).
    pub fn with_progress(mut self, f: impl Fn(u64, u64) + Send + Sync + 'a) -> Self {
        self.progress = Some(Arc::new(f));
        self
    }

    /// A child loader whose names are prefixed with `prefix.` (an empty prefix is a no-op).
    pub fn pp(&self, prefix: impl AsRef<str>) -> WeightLoader<'a> {
        let mut child = self.clone();
        child.prefix = self.full_name(prefix.as_ref());
        child
    }

    /// A loader at the root of the checkpoint (no prefix), sharing this one's record.
    pub fn root(&self) -> WeightLoader<'a> {
        let mut r = self.clone();
        r.prefix.clear();
        r
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn device(&self) -> &Device {
        &self.device
    }
    pub fn checkpoint(&self) -> &'a Checkpoint {
        self.ckpt
    }

    /// `prefix.name` (or `name` at the root / `prefix` for an empty name).
    pub fn full_name(&self, name: &str) -> String {
        match (self.prefix.is_empty(), name.is_empty()) {
            (true, _) => name.to_string(),
            (false, true) => self.prefix.clone(),
            (false, false) => format!("{}.{name}", self.prefix),
        }
    }

    /// Checks a configured layer count against the layers the checkpoint holds under
    /// `prefix.name.{i}.`, before a model allocates anything for them: a count that
    /// disagrees (10^12 layers, or 0 with layer weights present) is an error naming the
    /// config key, not an allocation failure or a million "missing tensor" lines. Random
    /// weights have every layer.
    pub fn check_layer_count(&self, name: &str, configured: usize, key: &str) -> Result<()> {
        if self.ckpt.random.is_some() {
            return Ok(());
        }
        let stem = format!("{}.", self.full_name(name));
        let mut present = std::collections::BTreeSet::new();
        for n in self.ckpt.names.keys() {
            if let Some(rest) = n.strip_prefix(&stem)
                && let Some((i, _)) = rest.split_once('.')
                && let Ok(i) = i.parse::<usize>()
            {
                present.insert(i);
            }
        }
        let found = present.len();
        let contiguous = present.iter().enumerate().all(|(k, &i)| k == i);
        if found == configured && contiguous {
            return Ok(());
        }
        let held = match (present.first(), present.last()) {
            (Some(a), Some(b)) if contiguous => format!("{found} layers ({stem}{a} to {stem}{b})"),
            (Some(_), Some(_)) => format!(
                "{found} layers with gaps in their numbering ({})",
                present
                    .iter()
                    .take(8)
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            _ => format!("no layers under {stem}*"),
        };
        Err(ModelError::checkpoint(
            &self.ckpt.path,
            format!("config key {key} is {configured} but the checkpoint holds {held}"),
        ))
    }

    /// Checks that axis `axis` of tensor `name` (when the checkpoint holds it) is the
    /// `configured` value of config key `key`: a config that disagrees with its checkpoint
    /// (a `vocab_size` smaller than the embedding table) is an error naming the key, rather
    /// than a shape mismatch alone or an internal error at the first token past the table.
    pub fn check_dim(&self, name: &str, axis: usize, configured: usize, key: &str) -> Result<()> {
        let full = self.full_name(name);
        let Some(found) = self
            .ckpt
            .meta(&full)
            .and_then(|m| m.shape.get(axis).copied())
        else {
            return Ok(());
        };
        if found == configured {
            return Ok(());
        }
        Err(ModelError::checkpoint(
            &self.ckpt.path,
            format!(
                "config key {key} is {configured} but {full} has {found} (axis {axis} of its shape)"
            ),
        ))
    }

    /// Whether `prefix.name` is in the checkpoint.
    pub fn contains(&self, name: &str) -> bool {
        self.ckpt.contains(&self.full_name(name))
    }

    /// Storage dtype of a non-linear tensor (the module doc has the policy).
    fn policy_dtype(&self, shape: &[usize]) -> DType {
        if shape.len() < 2 {
            DType::F32
        } else if self.dtype.is_packed() {
            DType::F16
        } else {
            self.dtype
        }
    }

    /// The weight `prefix.name` `[out, in]` of a linear layer, one of the two kinds of
    /// tensor that may be quantized: in the loader's dtype (quantized from the stored floats
    /// when that is q8/q4), or used in place when the checkpoint stores it quantized.
    pub fn get_linear(&self, name: &str, shape: &[usize]) -> Tensor {
        self.get_quantizable(name, None, shape, self.dtype, self.panels(self.dtype))
    }

    /// The dtype of an embedding table or a (possibly tied) LM head: the loader's, except
    /// that bf16 packs linear weights only (the gather of rows and the decode head GEMV read
    /// f16 as fast, and a tied table stays one copy).
    fn table_dtype(&self) -> DType {
        if self.dtype == DType::BF16 {
            DType::F16
        } else {
            self.dtype
        }
    }

    /// A token-embedding table `[vocab, d]`, the other kind of quantizable tensor: it is
    /// the tied LM head of OPT and T5 (a GEMV over the whole vocabulary every token), and
    /// gathering rows dequantizes them exactly as the head's matmul does.
    pub fn get_embedding(&self, name: &str, shape: &[usize]) -> Tensor {
        self.get_quantizable(
            name,
            None,
            shape,
            self.table_dtype(),
            self.panels(self.table_dtype()),
        )
    }

    /// [`Self::get_linear`] for a head that may be tied: `prefix.name`, or `prefix.fallback`
    /// (the embedding table, loaded once for both) when the first is absent.
    pub fn get_linear_with_fallback(&self, name: &str, fallback: &str, shape: &[usize]) -> Tensor {
        let dtype = self.table_dtype();
        self.get_quantizable(name, Some(fallback), shape, dtype, self.panels(dtype))
    }

    fn get_quantizable(
        &self,
        name: &str,
        fallback: Option<&str>,
        shape: &[usize],
        dtype: DType,
        panels: bool,
    ) -> Tensor {
        let Some(full) = self.resolve(name, fallback, shape) else {
            return self.placeholder(shape, dtype);
        };
        self.lock().linear.insert(full.clone());
        let scales = format!("{full}{QSCALES_SUFFIX}");
        let stored_u8 = self.ckpt.meta(&full).is_some_and(|m| m.dtype == Dtype::U8);
        if self.ckpt.random.is_none() && (stored_u8 || self.ckpt.names.contains_key(&scales)) {
            return self.load_prequantized(&full, &scales, shape);
        }
        self.load_as(&full, shape, dtype, panels)
    }

    /// Whether f32/f16 linear weights are packed into the CPU GEMM's panels as they load:
    /// on the CPU, where its kernels read them in place (`BLIP2_CPU_PACK=0` turns it off).
    /// Token tables are packed too: they are the (tied) LM heads, the largest decode GEMV,
    /// and gathering a few rows a step from panels costs little.
    fn panels(&self, dtype: DType) -> bool {
        matches!(self.device, Device::Cpu)
            && matches!(dtype, DType::F32 | DType::F16)
            && blip2_engine::panels_preferred()
    }

    /// The checkpoint name to load for `prefix.name`, else `prefix.fallback` (tied weights:
    /// OPT `lm_head.weight` -> `model.decoder.embed_tokens.weight`; T5 `lm_head.weight` ->
    /// `shared.weight`); `None`, recorded as missing, when neither exists.
    fn resolve(&self, name: &str, fallback: Option<&str>, shape: &[usize]) -> Option<String> {
        let full = self.full_name(name);
        let fb = fallback.map(|f| self.full_name(f));
        // Random weights stand for a checkpoint saved by transformers, which stores a tied
        // head once, under the embedding's name: one copy, as with the real files.
        if self.ckpt.random.is_some() {
            return Some(fb.unwrap_or(full));
        }
        if self.ckpt.contains(&full) {
            return Some(full);
        }
        if let Some(fb) = fb.as_ref().filter(|f| self.ckpt.contains(f)) {
            return Some(fb.clone());
        }
        self.record(WeightProblem::Missing {
            name: full,
            expected: shape.to_vec(),
            fallback: fb,
        });
        None
    }

    /// A quantized tensor as `blip2 quantize` writes it: `full` the U8 quants
    /// `[rows, row_bytes]`, `scales` the F16 scales `[rows, row_blocks]`, both checked against
    /// the logical `shape` and the file's declared dtype; the quants are not copied.
    fn load_prequantized(&self, full: &str, scales: &str, shape: &[usize]) -> Tensor {
        let ckpt = self.ckpt;
        let file = ckpt
            .meta(full)
            .or_else(|| ckpt.meta(scales))
            .map_or_else(|| ckpt.path.clone(), |m| m.file.to_path_buf());
        let bad = |msg: String| {
            self.record(WeightProblem::Quantized {
                name: full.to_string(),
                file: file.clone(),
                msg,
            });
            self.placeholder(shape, DType::F16)
        };
        let Some(meta) = ckpt.meta(full) else {
            return bad(format!(
                "the scales tensor {scales} exists but the quantized tensor does not"
            ));
        };
        let Some(qdtype) = ckpt.quant_of(full) else {
            return bad(format!(
                "stored quantized ({:?} with {scales}) but the file's __metadata__ declares no {META_QUANT_DTYPE}",
                meta.dtype
            ));
        };
        let key = (full.to_string(), qdtype);
        if let Some(t) = self.lock().cache.get(&key)
            && t.shape() == shape
        {
            return t.clone();
        }
        let Some(format) = qdtype.quant_format() else {
            return bad(format!("{qdtype} is not a quantized dtype"));
        };
        let Some((&cols, lead)) = shape.split_last() else {
            return bad("a quantized tensor needs rank >= 1".into());
        };
        let rows: usize = lead.iter().product();
        if meta.dtype != Dtype::U8 {
            return bad(format!(
                "has a scales tensor {scales} but is stored as {:?}, not U8 quants",
                meta.dtype
            ));
        }
        let want_q = [rows, format.row_bytes(cols)];
        if meta.shape != want_q {
            let other = match format {
                QFormat::Q8 => QFormat::Q4,
                QFormat::Q4 => QFormat::Q8,
            };
            let hint = if meta.shape == [rows, other.row_bytes(cols)] {
                format!(" (that is {}-sized)", other.name())
            } else {
                String::new()
            };
            return bad(format!(
                "{qdtype} quants of {shape:?} need U8 shape {want_q:?}, found {:?}{hint}",
                meta.shape
            ));
        }
        let Some(smeta) = ckpt.meta(scales) else {
            return bad(format!("its scales tensor {scales} is missing"));
        };
        let want_s = [rows, QFormat::row_blocks(cols)];
        if smeta.dtype != Dtype::F16 || smeta.shape != want_s {
            return bad(format!(
                "scales tensor {scales} must be F16 {want_s:?}, found {:?} {:?}",
                smeta.dtype, smeta.shape
            ));
        }
        let (Some(qs), Some(sbytes)) = (ckpt.shared(full), ckpt.raw(scales)) else {
            return bad("tensor data lies outside the file".into());
        };
        // Quants are integers; a NaN or infinite scale poisons its whole block.
        if let Some(p) = value_problem(scales, smeta.file, StoredDType::F16, sbytes, DType::F16) {
            self.record(p);
            return self.placeholder(shape, DType::F16);
        }
        let qlen = qs.as_slice().len() as u64;
        match Tensor::from_quantized(qdtype, shape, qs, sbytes, &self.device) {
            Ok(t) => {
                let (done, total) = {
                    let mut st = self.lock();
                    st.used.insert(full.to_string());
                    st.used.insert(scales.to_string());
                    st.cache.insert(key, t.clone());
                    st.prequantized += 1;
                    st.bytes_done += qlen + sbytes.len() as u64;
                    (st.bytes_done, ckpt.total_bytes)
                };
                if let Some(p) = &self.progress {
                    p(done, total);
                }
                t
            }
            Err(e) => bad(e.to_string()),
        }
    }

    /// The tensor `prefix.name` with `shape`: rank >= 2 in the loader's dtype, rank <= 1 in
    /// f32. A missing or mismatched tensor is recorded and a zero-size placeholder returned.
    pub fn get(&self, name: &str, shape: &[usize]) -> Tensor {
        self.get_dtype(name, shape, self.policy_dtype(shape))
    }

    /// Like [`Self::get`], always f32.
    pub fn get_f32(&self, name: &str, shape: &[usize]) -> Tensor {
        self.get_dtype(name, shape, DType::F32)
    }

    /// Like [`Self::get`] with an explicit storage dtype.
    pub fn get_dtype(&self, name: &str, shape: &[usize], dtype: DType) -> Tensor {
        match self.resolve(name, None, shape) {
            Some(full) => self.load(&full, shape, dtype),
            None => self.placeholder(shape, dtype),
        }
    }

    /// `Some(tensor)` when `prefix.name` exists (shape-checked like `get`), `None` otherwise
    /// without recording a problem (optional weights such as the retrieval heads).
    pub fn get_optional(&self, name: &str, shape: &[usize]) -> Option<Tensor> {
        let full = self.full_name(name);
        self.ckpt
            .contains(&full)
            .then(|| self.load(&full, shape, self.policy_dtype(shape)))
    }

    fn load(&self, full: &str, shape: &[usize], dtype: DType) -> Tensor {
        self.load_as(full, shape, dtype, false)
    }

    /// [`Self::load`], into the CPU GEMM's panel layout when `panels` (a linear weight or
    /// table) and the tensor is a copy anyway (converted, random or merged): packed as it is
    /// made, so the row-major copy goes at once.
    fn load_as(&self, full: &str, shape: &[usize], dtype: DType, panels: bool) -> Tensor {
        let key = (full.to_string(), dtype);
        if let Some(t) = self.lock().cache.get(&key)
            && t.shape() == shape
        {
            return t.clone();
        }
        let edits = self
            .adapters
            .as_deref()
            .and_then(|a| Some((a, a.edits(full)?)));
        if let Some(seed) = self.ckpt.random {
            let t = match edits {
                Some((adapters, edits)) => {
                    let base = random_values(full, shape, seed);
                    return self.merged(full, shape, dtype, base, adapters, edits, panels);
                }
                None => random_tensor(full, shape, dtype, seed, &self.device)
                    .and_then(|t| in_layout(t, panels)),
            };
            return match t {
                Ok(t) => {
                    let mut st = self.lock();
                    st.quantized_at_load += usize::from(dtype.is_quantized());
                    st.cache.insert(key, t.clone());
                    t
                }
                Err(e) => self.read_failed(full, self.ckpt.path.clone(), e, shape, dtype),
            };
        }
        let Some(meta) = self.ckpt.meta(full) else {
            self.record(WeightProblem::Missing {
                name: full.to_string(),
                expected: shape.to_vec(),
                fallback: None,
            });
            return self.placeholder(shape, dtype);
        };
        if meta.shape != shape {
            self.record(WeightProblem::ShapeMismatch {
                name: full.to_string(),
                expected: shape.to_vec(),
                found: meta.shape.to_vec(),
            });
            return self.placeholder(shape, dtype);
        }
        let scales = format!("{full}{QSCALES_SUFFIX}");
        if self.ckpt.names.contains_key(&scales) {
            self.record(WeightProblem::Quantized {
                name: full.to_string(),
                file: meta.file.to_path_buf(),
                msg: format!(
                    "has a scales tensor {scales}, but the model reads it as a float tensor (only linear weights and token embeddings are quantized)"
                ),
            });
            return self.placeholder(shape, dtype);
        }
        let Some(stored) = stored_dtype(meta.dtype) else {
            self.record(WeightProblem::UnsupportedDType {
                name: full.to_string(),
                dtype: format!("{:?}", meta.dtype),
                file: meta.file.to_path_buf(),
            });
            return self.placeholder(shape, dtype);
        };
        let file = meta.file.to_path_buf();
        let Some((owner, start, len)) = self.ckpt.located(full) else {
            return self.read_failed(
                full,
                file,
                "tensor data lies outside the file",
                shape,
                dtype,
            );
        };
        let bytes = &(*owner).as_ref()[start..start + len];
        // A merged tensor is checked for f16 overflow after the merge, not before.
        let check_dtype = if edits.is_some() { DType::F32 } else { dtype };
        if let Some(p) = value_problem(full, &file, stored, bytes, check_dtype) {
            self.record(p);
            return self.placeholder(shape, dtype);
        }
        if let Some((adapters, edits)) = edits {
            let base = Tensor::from_bytes(bytes, stored, shape, DType::F32, &Device::Cpu)
                .and_then(|t| t.to_vec_f32());
            let t = match base {
                Ok(base) => self.merged(full, shape, dtype, base, adapters, edits, panels),
                Err(e) => {
                    return self.read_failed(full, file, e, shape, dtype);
                }
            };
            self.ckpt.release(full);
            let (done, total) = {
                let mut st = self.lock();
                st.used.insert(full.to_string());
                st.bytes_done += len as u64;
                (st.bytes_done, self.ckpt.total_bytes)
            };
            if let Some(p) = &self.progress {
                p(done, total);
            }
            return t;
        }
        // A tensor used in place from the mapped file stays so (no copy, pages shared with
        // other processes); panels are made only where a copy is made anyway, or where
        // `BLIP2_CPU_PACK=all` asks for them.
        let t = if panels
            && (!Tensor::used_in_place(stored, dtype, &self.device)
                || blip2_engine::panels_for_mapped())
        {
            // Converted anyway: straight into panels, one allocation.
            Tensor::panels_from_bytes(bytes, stored, shape, dtype)
        } else {
            Tensor::from_shared_bytes(owner, start, len, stored, shape, dtype, &self.device)
                .and_then(|t| {
                    let copied = !t.is_shared();
                    in_layout(t, panels && copied)
                })
        };
        match t {
            Ok(t) => {
                // A copied (converted) tensor no longer needs the file's pages; a shared one
                // reads them in place.
                if t.is_shared() {
                    self.ckpt.populate(full);
                } else {
                    self.ckpt.release(full);
                }
                let (done, total) = {
                    let mut st = self.lock();
                    st.used.insert(full.to_string());
                    st.cache.insert(key, t.clone());
                    st.quantized_at_load += usize::from(dtype.is_quantized());
                    st.bytes_done += len as u64;
                    (st.bytes_done, self.ckpt.total_bytes)
                };
                if let Some(p) = &self.progress {
                    p(done, total);
                }
                t
            }
            Err(e) => self.read_failed(full, file, e, shape, dtype),
        }
    }

    /// `base` (the checkpoint's f32 values of `full`) with the adapters' `edits` applied, as a
    /// new tensor of `dtype` (quantized, packed or f16 from the merged values), cached.
    #[allow(clippy::too_many_arguments)]
    fn merged(
        &self,
        full: &str,
        shape: &[usize],
        dtype: DType,
        mut base: Vec<f32>,
        adapters: &Adapters,
        edits: &[TargetEdit],
        panels: bool,
    ) -> Tensor {
        let file = edits.last().map_or_else(
            || self.ckpt.path.clone(),
            |e| adapters.file(e.adapter).to_path_buf(),
        );
        if let Err(msg) = crate::adapters::apply(&mut base, shape, edits) {
            return self.read_failed(
                full,
                file,
                format!("cannot merge the adapter: {msg}"),
                shape,
                dtype,
            );
        }
        if let Some(p) = merged_value_problem(full, &file, &base, dtype) {
            self.record(p);
            return self.placeholder(shape, dtype);
        }
        let t = Tensor::from_slice(&base, shape, dtype, &self.device);
        match t.and_then(|t| in_layout(t, panels)) {
            Ok(t) => {
                let mut st = self.lock();
                st.adapted.insert(full.to_string());
                st.cache.insert((full.to_string(), dtype), t.clone());
                st.quantized_at_load += usize::from(dtype.is_quantized());
                t
            }
            Err(e) => self.read_failed(full, file, e, shape, dtype),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LoadState> {
        // A panic elsewhere while holding the lock leaves plain data behind: keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps a problem once (the same tensor may be asked for twice), up to
    /// [`MAX_WEIGHT_PROBLEMS`]; beyond that only counts it (repeats of problems not kept
    /// are counted again: remembering them would be the unbounded list).
    fn record(&self, p: WeightProblem) {
        let text = p.to_string();
        let mut st = self.lock();
        if st.problem_texts.contains(&text) {
            return;
        }
        if st.problems.len() >= MAX_WEIGHT_PROBLEMS {
            st.problems_more += 1;
        } else {
            st.problem_texts.insert(text);
            st.problems.push(p);
        }
    }

    /// Records that `full` could not be read from `file` and returns its placeholder.
    fn read_failed(
        &self,
        full: &str,
        file: PathBuf,
        msg: impl ToString,
        shape: &[usize],
        dtype: DType,
    ) -> Tensor {
        self.record(WeightProblem::Read {
            name: full.to_string(),
            file,
            msg: msg.to_string(),
        });
        self.placeholder(shape, dtype)
    }

    /// A tensor with no elements standing in for a bad weight: same rank, first dimension 0.
    fn placeholder(&self, shape: &[usize], dtype: DType) -> Tensor {
        let mut s = if shape.is_empty() {
            vec![0]
        } else {
            shape.to_vec()
        };
        s[0] = 0;
        Tensor::zeros(&s, dtype, &self.device)
            .or_else(|_| Tensor::zeros(&s, dtype, &Device::Cpu))
            .expect("a zero-size CPU tensor cannot fail to allocate")
    }

    /// Problems recorded so far, sorted by name, duplicates removed.
    pub fn problems(&self) -> Vec<WeightProblem> {
        let mut v = self.lock().problems.clone();
        v.sort_by(|a, b| {
            a.name()
                .cmp(b.name())
                .then_with(|| format!("{a}").cmp(&format!("{b}")))
        });
        v
    }

    /// `Ok(())` when every requested tensor loaded, else one [`ModelError::Weights`] listing
    /// every missing, mismatched or unreadable tensor with expected vs found shape.
    /// With adapters, every tensor they edit must have been read (else a
    /// [`ModelError::Adapter`] naming the unused keys).
    pub fn finish(&self) -> Result<()> {
        let problems = self.problems();
        if problems.is_empty() {
            if let Some(a) = &self.adapters {
                let st = self.lock();
                return a.check_used(|name| st.adapted.contains(name));
            }
            return Ok(());
        }
        Err(ModelError::Weights(WeightProblems {
            checkpoint: self.ckpt.path.clone(),
            problems,
            more: self.lock().problems_more,
        }))
    }

    /// Checkpoint tensors never loaded (sorted): leftovers of a layout mismatch, or weights
    /// of heads this model does not use.
    pub fn unused(&self) -> Vec<String> {
        let st = self.lock();
        let mut v: Vec<String> = self
            .ckpt
            .names
            .keys()
            .filter(|n| !st.used.contains(*n))
            .cloned()
            .collect();
        v.sort_unstable();
        v
    }

    /// Bytes of tensor data loaded so far.
    pub fn bytes_loaded(&self) -> u64 {
        self.lock().bytes_done
    }

    /// Sizes of every tensor loaded so far (see [`WeightStats`]).
    pub fn stats(&self) -> WeightStats {
        let st = self.lock();
        let mut s = WeightStats {
            prequantized: st.prequantized,
            quantized_at_load: st.quantized_at_load,
            adapters: self
                .adapters
                .as_ref()
                .map_or(Vec::new(), |a| a.stats().to_vec()),
            ..Default::default()
        };
        let mut linear_dtypes = std::collections::BTreeSet::new();
        s.mapped = st
            .cache
            .values()
            .filter(|t| t.is_shared() && !t.dtype().is_quantized())
            .count();
        let cached = st
            .cache
            .iter()
            .map(|((name, _), t)| (name, t.dtype(), t.size_in_bytes() as u64));
        let released = st.released.iter().map(|(name, d, b)| (name, *d, *b));
        for (name, dtype, b) in cached.chain(released) {
            s.tensors += 1;
            s.bytes += b;
            *s.bytes_by_dtype.entry(dtype.to_string()).or_insert(0) += b;
            if st.linear.contains(name) {
                s.linear_weights += 1;
                s.linear_bytes += b;
                linear_dtypes.insert(dtype.to_string());
            }
        }
        s.linear_dtype = match linear_dtypes.len() {
            0 => String::new(),
            1 => linear_dtypes.pop_first().unwrap_or_default(),
            _ => "mixed".into(),
        };
        s
    }

    /// Every tensor loaded so far with its checkpoint name, sorted by name (what
    /// `blip2 quantize` writes).
    pub fn loaded_tensors(&self) -> Vec<(String, Tensor)> {
        let st = self.lock();
        let mut v: Vec<(String, Tensor)> = st
            .cache
            .iter()
            .map(|((n, _), t)| (n.clone(), t.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Lets go of the loaded tensors `names` (under this loader's prefix) once the model
    /// holds their values in another tensor (q/k/v stacked into one matrix): their memory
    /// goes as the stack is made instead of when the load ends, where the parts and the
    /// stacks of every layer were resident together (OPT-2.7B in f16: 1.25 GB). They still
    /// count in [`WeightStats`]; [`Self::loaded_tensors`] no longer has them.
    pub fn release(&self, names: &[&str]) {
        let mut st = self.lock();
        for name in names {
            let full = self.full_name(name);
            let keys: Vec<(String, DType)> = st
                .cache
                .keys()
                .filter(|(n, _)| *n == full)
                .cloned()
                .collect();
            for key in keys {
                if let Some(t) = st.cache.remove(&key) {
                    let bytes = t.size_in_bytes() as u64;
                    st.released.push((key.0, key.1, bytes));
                }
            }
        }
    }

    /// How many loaded tensors were [released](Self::release).
    pub fn released(&self) -> usize {
        self.lock().released.len()
    }

    /// Drops the cache of loaded tensors (the model keeps its own references).
    pub fn clear_cache(&self) {
        self.lock().cache.clear();
    }
}

/// Seeded random values for `name` (see [`Checkpoint::random`]), generated in parallel.
/// Values a model cannot compute with, found before any conversion: NaN or ±inf anywhere
/// (they turn every answer into NaN or fluent garbage), or finite values that would
/// overflow to ±inf as f16 when `dtype` stores them as f16.
fn value_problem(
    name: &str,
    file: &Path,
    stored: StoredDType,
    bytes: &[u8],
    dtype: DType,
) -> Option<WeightProblem> {
    let count = stored.count_nonfinite(bytes);
    if count > 0 {
        return Some(WeightProblem::NonFinite {
            name: name.to_string(),
            file: file.to_path_buf(),
            count,
            first: stored.first_nonfinite(bytes).unwrap_or(0),
        });
    }
    if dtype == DType::F16 {
        let (count, max_abs) = stored.f16_overflow(bytes);
        if count > 0 {
            return Some(WeightProblem::F16Overflow {
                name: name.to_string(),
                file: file.to_path_buf(),
                count,
                max_abs: format!("{max_abs:e}"),
            });
        }
    }
    None
}

fn random_tensor(
    name: &str,
    shape: &[usize],
    dtype: DType,
    seed: u64,
    device: &Device,
) -> blip2_engine::Result<Tensor> {
    Tensor::from_slice(&random_values(name, shape, seed), shape, dtype, device)
}

/// [`value_problem`] for merged values: NaN or ±inf, or overflow of an f16 `dtype`, named
/// after the adapter file that produced them.
fn merged_value_problem(
    name: &str,
    file: &Path,
    values: &[f32],
    dtype: DType,
) -> Option<WeightProblem> {
    let bad: Vec<usize> = (0..values.len())
        .filter(|&i| !values[i].is_finite())
        .collect();
    if let Some(&first) = bad.first() {
        return Some(WeightProblem::NonFinite {
            name: name.to_string(),
            file: file.to_path_buf(),
            count: bad.len(),
            first,
        });
    }
    // 65520 is the smallest magnitude f16 rounds to ±inf (as `StoredDType::f16_overflow`).
    let over: Vec<f32> = values
        .iter()
        .map(|v| v.abs())
        .filter(|&v| v >= 65520.0)
        .collect();
    (dtype == DType::F16 && !over.is_empty()).then(|| WeightProblem::F16Overflow {
        name: name.to_string(),
        file: file.to_path_buf(),
        count: over.len(),
        max_abs: format!("{:e}", over.iter().fold(0f32, |m, &v| m.max(v))),
    })
}

/// The values of [`random_tensor`].
fn random_values(name: &str, shape: &[usize], seed: u64) -> Vec<f32> {
    use rayon::prelude::*;
    let n: usize = shape.iter().product();
    let lname = name.to_ascii_lowercase();
    if lname.contains("norm") && lname.ends_with(".weight") {
        return vec![1.0; n];
    }
    // FNV-1a of the name, so each tensor gets its own stream whatever the load order.
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64 ^ seed, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    let mut v = vec![0f32; n];
    // Uniform on [-a, a] with a = 0.02·√3 has std 0.02.
    let a = 0.02 * 3f32.sqrt();
    v.par_chunks_mut(1 << 16)
        .enumerate()
        .for_each(|(c, chunk)| {
            let mut x = (h ^ (c as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1;
            for e in chunk {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *e = ((x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * a;
            }
        });
    v
}

/// `t` in the CPU GEMM's panel layout when `panels`, else as it is.
fn in_layout(t: Tensor, panels: bool) -> blip2_engine::Result<Tensor> {
    if panels { t.to_panels() } else { Ok(t) }
}
