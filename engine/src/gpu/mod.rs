//! GPU backend on wgpu 30 with the WGSL kernels of `blip2-shaders`.
//!
//! Runtime in one paragraph: a [`GpuContext`] owns the wgpu device and queue and one
//! recorder behind a mutex (ops from several threads serialise on it). Ops never submit:
//! each records compute dispatches into the recorder's pending command encoder (one compute
//! pass, reopened after copies), writes its parameters into one host-side uniform arena
//! (slots aligned to `min_uniform_buffer_offset_alignment`, bound with dynamic offsets,
//! uploaded with a single `write_buffer` just before the submit), and gets pipelines
//! (specialised WGSL, cached by kernel + constants) and bind groups (cached by buffer ids and
//! ranges) from caches. The encoder is submitted only when a result is read back, on
//! [`GpuContext::synchronize`], or after `max_batch` dispatches, so a decode step is one
//! submit. Tensor buffers come from a size-keyed pool and return to it when the last
//! [`GpuStorage`] clone drops; see `pool.rs` for why reuse before a submit is safe. Tensors
//! larger than `max_storage_buffer_binding_size` live in one buffer (up to
//! `max_buffer_size`) and kernels bind aligned sub-ranges of it. wgpu errors are captured
//! with error scopes around allocation, pipeline creation and submission, an uncaptured-error
//! handler and a device-lost callback, and come back as [`crate::Error`], never a panic.
//!
//! f16 storage: halves packed two per 32-bit word, read with `unpack2x16float`; this works
//! on every adapter (see `blip2-shaders`). Where the adapter has `SHADER_F16` it is
//! requested, and the GEMV and the tiled matmul over f16 weights and f16 activations (f32
//! activations too with `GpuOptions::f16_math_f32_act`) use their f16-arithmetic variants
//! (f16 products in runs of 8, f32 accumulation) unless `GpuOptions::f16_math` is off
//! (`BLIP2_GPU_NO_F16_MATH=1`).

mod config;
pub mod ops;
mod pool;
mod runtime;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use config::GpuOptions;
pub(crate) use runtime::{Bind, Recorder};

use crate::{DType, DeviceInfo, Error, QFormat, Result};
use pool::Pool;

/// A tensor's GPU buffer. Clones share it; when the last clone drops, the buffer returns to
/// the context's pool for reuse.
#[derive(Clone)]
pub struct GpuStorage {
    pub(crate) buf: Arc<PooledBuffer>,
    /// Bytes of the tensor's data, rounded up to whole 32-bit words.
    pub(crate) bytes: u64,
}

pub(crate) struct PooledBuffer {
    buffer: Option<wgpu::Buffer>,
    pub(crate) id: u64,
    pub(crate) size: u64,
    pool: Arc<Pool>,
}

impl PooledBuffer {
    pub(crate) fn raw(&self) -> &wgpu::Buffer {
        match &self.buffer {
            Some(b) => b,
            None => unreachable!("buffer taken only in Drop"),
        }
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        if let Some(b) = self.buffer.take() {
            self.pool.release(self.size, self.id, b);
        }
    }
}

/// Counters of the runtime, for tests and tuning.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GpuStats {
    /// wgpu buffers created for tensors (pool misses).
    pub buffers_created: u64,
    /// Tensor buffers served from the pool.
    pub buffers_reused: u64,
    /// Bytes of tensor buffers in use / kept free in the pool.
    pub live_bytes: u64,
    pub pooled_bytes: u64,
    /// Queue submissions that carried recorded commands.
    pub submits: u64,
    /// Compute dispatches recorded.
    pub dispatches: u64,
    /// Bytes copied back to the host (staging reads of tensors).
    pub readback_bytes: u64,
    pub pipelines_compiled: u64,
    pub bind_groups_created: u64,
    pub bind_group_cache_hits: u64,
}

/// Errors wgpu reports outside error scopes, and device loss.
#[derive(Default)]
pub(crate) struct ErrorSink {
    lost: AtomicBool,
    lost_reason: Mutex<String>,
    uncaptured: Mutex<Vec<String>>,
}

/// Rounds `v` up to a multiple of `a` (a > 0).
pub(crate) fn round_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

/// Byte offset of the scales in a quantized matrix's buffer: after `qs_len` bytes of quants,
/// rounded up to the storage-binding offset alignment.
pub(crate) fn quant_scales_offset(qs_len: usize, align: u32) -> usize {
    round_up(qs_len as u64, align.max(4) as u64) as usize
}

/// Bytes of `n` elements of `dtype` rounded up to whole words (f16 packs two per word).
pub(crate) fn data_bytes(n: usize, dtype: DType) -> u64 {
    round_up((n * dtype.size_of()) as u64, 4)
}

/// One wgpu device with its queue, recorder, caches and buffer pool.
pub struct GpuContext {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    info: DeviceInfo,
    pub(crate) limits: wgpu::Limits,
    pub(crate) opts: GpuOptions,
    /// Subgroup kernels in use (adapter has SUBGROUP and the switch allows it).
    pub(crate) subgroups: bool,
    /// Tensor-core linear layers allowed: the adapter's fixed subgroup size, which is the
    /// cooperative kernel's workgroup size ([`coop_subgroup`]).
    pub(crate) coop: Option<u32>,
    /// The tensor-core kernel's self-check, made on its first use (`ops::coop_verified`).
    pub(crate) coop_checked: std::sync::OnceLock<bool>,
    /// f16-arithmetic kernel variants in use (adapter has SHADER_F16 and the switch allows
    /// them).
    pub(crate) f16_math: bool,
    /// Largest storage binding in bytes (multiple of 16).
    pub(crate) max_binding: u64,
    /// Storage binding offset alignment in bytes.
    pub(crate) storage_align: u64,
    pub(crate) pool: Arc<Pool>,
    recorder: Mutex<Recorder>,
    errors: Arc<ErrorSink>,
    /// Bound in place of absent optional operands.
    pub(crate) dummy: GpuStorage,
}

impl GpuContext {
    /// Opens the adapter wgpu picks (honouring `WGPU_BACKEND`, `WGPU_ADAPTER_NAME`,
    /// `WGPU_POWER_PREF`) with options from the environment ([`GpuOptions::from_env`]).
    pub fn new() -> Result<GpuContext> {
        Self::with_options(GpuOptions::from_env())
    }

    pub fn with_options(opts: GpuOptions) -> Result<GpuContext> {
        let mut first_err = None;
        let mut found = None;
        for backends in backend_tiers() {
            match pollster::block_on(pick_adapter(&instance(backends))) {
                Ok(a) => {
                    found = Some(a);
                    break;
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        let Some(adapter) = found else {
            return Err(first_err.unwrap_or_else(|| Error::NoAdapter("no backends".into())));
        };
        let ainfo = adapter.get_info();
        let afeat = adapter.features();
        let limits = adapter.limits();
        let subgroups = opts.subgroups && afeat.contains(wgpu::Features::SUBGROUP);
        let mut features = wgpu::Features::empty();
        if subgroups {
            features |= wgpu::Features::SUBGROUP;
        }
        // Requested whenever present (the tensor-core kernel needs it too); f16 storage
        // itself does not.
        let has_f16 = afeat.contains(wgpu::Features::SHADER_F16);
        if has_f16 {
            features |= wgpu::Features::SHADER_F16;
        }
        let f16_math = opts.f16_math && has_f16;
        let coop = coop_subgroup(&opts, &adapter);
        if coop.is_some() {
            features |= wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
        }
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("blip2"),
            required_features: features,
            // The adapter's own limits: on big GPUs the binding limit is 2+ GiB, not 128 MiB.
            required_limits: limits.clone(),
            experimental_features: if coop.is_some() {
                // SAFETY: wgpu's token for its experimental features; only the cooperative-
                // matrix one is requested, behind the opt-in switch (config.rs).
                unsafe { wgpu::ExperimentalFeatures::enabled() }
            } else {
                wgpu::ExperimentalFeatures::disabled()
            },
            ..Default::default()
        }))
        .map_err(|e| Error::NoAdapter(format!("adapter '{}' refused a device: {e}", ainfo.name)))?;

        let errors = Arc::new(ErrorSink::default());
        {
            let sink = errors.clone();
            device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
                sink.uncaptured
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(e.to_string());
            }));
            let sink = errors.clone();
            device.set_device_lost_callback(move |reason, msg| {
                *sink.lost_reason.lock().unwrap_or_else(|p| p.into_inner()) =
                    format!("{reason:?}: {msg}");
                sink.lost.store(true, Ordering::SeqCst);
            });
        }

        let mut max_binding = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        if let Some(cap) = opts.max_binding {
            max_binding = max_binding.min(cap.max(256));
        }
        max_binding = max_binding / 16 * 16;
        let storage_align = (limits.min_storage_buffer_offset_alignment as u64).max(16);

        let info = DeviceInfo {
            name: ainfo.name.clone(),
            backend: format!("{:?}", ainfo.backend),
            driver: format!("{} {}", ainfo.driver, ainfo.driver_info)
                .trim()
                .to_string(),
            device_type: format!("{:?}", ainfo.device_type),
            shader_f16: afeat.contains(wgpu::Features::SHADER_F16),
            subgroups: afeat.contains(wgpu::Features::SUBGROUP),
            subgroup_min_size: ainfo.subgroup_min_size,
            subgroup_max_size: ainfo.subgroup_max_size,
            timestamp_query: afeat.contains(wgpu::Features::TIMESTAMP_QUERY),
            cooperative_matrix: afeat.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX),
            max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
            max_buffer_size: limits.max_buffer_size,
            max_compute_workgroup_storage_size: limits.max_compute_workgroup_storage_size,
            max_compute_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
            threads: 0,
        };

        let pool = Arc::new(Pool::new(opts.pool_bytes));
        let recorder = Recorder::new(&device, &limits, opts.max_batch)?;
        let dummy_buf = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("blip2 dummy operand"),
            size: 256,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        pool.created(256);
        let dummy = GpuStorage {
            buf: Arc::new(PooledBuffer {
                buffer: Some(dummy_buf),
                id: pool::next_id(),
                size: 256,
                pool: pool.clone(),
            }),
            bytes: 16,
        };
        Ok(GpuContext {
            device,
            queue,
            info,
            limits,
            opts,
            subgroups,
            coop,
            coop_checked: std::sync::OnceLock::new(),
            f16_math,
            max_binding,
            storage_align,
            pool,
            recorder: Mutex::new(recorder),
            errors,
            dummy,
        })
    }

    /// What the adapter is and can do.
    pub fn info(&self) -> DeviceInfo {
        self.info.clone()
    }

    /// Whether linear layers over f16 weights run on tensor cores: the adapter offers
    /// 16×16×16 f16 cooperative matrices, `BLIP2_GPU_NO_COOP` is not set (see
    /// [`GpuOptions`]) and the kernel has not failed its self-check (made on first use).
    pub fn tensor_cores(&self) -> bool {
        self.coop.is_some() && self.coop_checked.get() != Some(&false)
    }

    /// Whether the f16-arithmetic kernel variants run (the adapter has `SHADER_F16` and
    /// `BLIP2_GPU_NO_F16_MATH` is not set; see [`GpuOptions`]).
    pub fn f16_math(&self) -> bool {
        self.f16_math
    }

    /// The options this context was opened with.
    pub fn options(&self) -> &GpuOptions {
        &self.opts
    }

    /// Largest storage binding the kernels use, in bytes.
    pub fn max_binding_size(&self) -> u64 {
        self.max_binding
    }

    /// Submits everything recorded and waits until the GPU has finished it.
    pub fn synchronize(&self) -> Result<()> {
        let mut rec = self.recorder()?;
        rec.flush(self)?;
        self.wait()
    }

    pub fn stats(&self) -> GpuStats {
        let p = self.pool.stats();
        let r = self
            .recorder
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .stats;
        GpuStats {
            buffers_created: p.created,
            buffers_reused: p.reused,
            live_bytes: p.live_bytes,
            pooled_bytes: p.free_bytes,
            ..r
        }
    }

    /// Fails when the device was lost or wgpu reported an error outside any error scope.
    pub(crate) fn check(&self) -> Result<()> {
        if self.errors.lost.load(Ordering::SeqCst) {
            let why = self
                .errors
                .lost_reason
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            return Err(Error::DeviceLost(why));
        }
        let mut u = self
            .errors
            .uncaptured
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if !u.is_empty() {
            let msg = u.join("; ");
            u.clear();
            return Err(Error::Gpu(msg));
        }
        Ok(())
    }

    /// The recorder, after checking the device is healthy. A panic while it was held leaves
    /// at worst an unsubmitted encoder, which the next flush submits or reports.
    pub(crate) fn recorder(&self) -> Result<MutexGuard<'_, Recorder>> {
        self.check()?;
        Ok(self.recorder.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub(crate) fn wait(&self) -> Result<()> {
        match self.device.poll(wgpu::PollType::wait_indefinitely()) {
            Ok(_) => self.check(),
            Err(e) => {
                self.check()?;
                Err(Error::DeviceLost(format!("waiting for the GPU: {e}")))
            }
        }
    }

    /// A buffer of at least `bytes` for a tensor. `recorded_write`: the caller fills it with
    /// a recorded command (dispatch, clear), so a buffer released since the last submit may
    /// be reused; uploads through `queue.write_buffer` must pass false (see `pool.rs`).
    pub(crate) fn alloc(&self, bytes: u64, recorded_write: bool) -> Result<GpuStorage> {
        let size = round_up(bytes.max(16), 256);
        if size > self.limits.max_buffer_size {
            return Err(Error::Limit {
                what: format!("a GPU buffer of {bytes} bytes (max_buffer_size)"),
                needed: bytes,
                limit: self.limits.max_buffer_size,
            });
        }
        if let Some((size, id, buffer)) = self.pool.take(size, recorded_write) {
            return Ok(GpuStorage {
                buf: Arc::new(PooledBuffer {
                    buffer: Some(buffer),
                    id,
                    size,
                    pool: self.pool.clone(),
                }),
                bytes,
            });
        }
        self.check()?;
        let buffer = runtime::create_buffer_checked(
            &self.device,
            &wgpu::BufferDescriptor {
                label: None,
                size,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            },
            || format!("allocating a buffer of {size} bytes"),
        )?;
        self.pool.created(size);
        Ok(GpuStorage {
            buf: Arc::new(PooledBuffer {
                buffer: Some(buffer),
                id: pool::next_id(),
                size,
                pool: self.pool.clone(),
            }),
            bytes,
        })
    }

    fn upload_bytes(&self, data: &[u8]) -> Result<GpuStorage> {
        let bytes = round_up(data.len() as u64, 4);
        let s = self.alloc(bytes, false)?;
        if data.is_empty() {
            return Ok(s);
        }
        let mut rec = self.recorder()?;
        let val = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        if data.len().is_multiple_of(4) {
            self.queue.write_buffer(s.buf.raw(), 0, data);
        } else {
            let mut padded = data.to_vec();
            padded.resize(bytes as usize, 0);
            self.queue.write_buffer(s.buf.raw(), 0, &padded);
        }
        if let Some(e) = pollster::block_on(val.pop()) {
            return Err(Error::Gpu(format!("uploading {bytes} bytes: {e}")));
        }
        rec.uploaded(self, bytes)?;
        Ok(s)
    }

    pub(crate) fn upload_f32(&self, data: &[f32]) -> Result<GpuStorage> {
        self.upload_bytes(bytemuck::cast_slice(data))
    }

    pub(crate) fn upload_f16(&self, data: &[half::f16]) -> Result<GpuStorage> {
        self.upload_bytes(bytemuck::cast_slice(data))
    }

    /// Where [`Self::upload_quant`] puts the scales after `qs_len` bytes of quants: aligned
    /// as the kernels' bindings require (`storage_align`, at least 16 bytes).
    pub(crate) fn quant_scales_offset(&self, qs_len: usize) -> usize {
        quant_scales_offset(qs_len, self.storage_align as u32)
    }

    /// A quantized matrix in one buffer: the quants as packed words from byte 0, then the
    /// f16 scales (two per word) from [`Self::quant_scales_offset`], aligned for binding.
    pub(crate) fn upload_quant(&self, q: &crate::quant::QuantData) -> Result<GpuStorage> {
        let qs = q.qs.as_slice();
        let off = self.quant_scales_offset(qs.len());
        let mut bytes = Vec::with_capacity(off + 2 * q.scales.len());
        bytes.extend_from_slice(qs);
        bytes.resize(off, 0);
        bytes.extend_from_slice(bytemuck::cast_slice(&q.scales));
        self.upload_bytes(&bytes)
    }

    /// Reads a quantized matrix stored by [`Self::upload_quant`] back to the host.
    pub(crate) fn download_quant(
        &self,
        s: &GpuStorage,
        format: QFormat,
        rows: usize,
        cols: usize,
    ) -> Result<crate::quant::QuantData> {
        let qlen = rows * format.row_bytes(cols);
        let nsc = rows * QFormat::row_blocks(cols);
        let off = self.quant_scales_offset(qlen);
        // Read as f32 words (bit patterns), then split the bytes.
        let words = self.download_words(s, (off + 2 * nsc).div_ceil(4))?;
        let bytes: &[u8] = bytemuck::cast_slice(&words);
        let scales = bytes[off..off + 2 * nsc]
            .chunks_exact(2)
            .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])))
            .collect();
        Ok(crate::quant::QuantData {
            format,
            rows,
            cols,
            qs: crate::quant::QuantBytes::Owned(bytes[..qlen].to_vec()),
            scales,
        })
    }

    /// Reads `n` raw 32-bit words back.
    pub(crate) fn download_words(&self, s: &GpuStorage, n: usize) -> Result<Vec<u32>> {
        let v = self.download_f32(s, DType::F32, n)?;
        Ok(v.into_iter().map(f32::to_bits).collect())
    }

    pub(crate) fn upload_u32(&self, data: &[u32]) -> Result<GpuStorage> {
        self.upload_bytes(bytemuck::cast_slice(data))
    }

    /// `n` zeros of `dtype` (cleared by a recorded command).
    pub(crate) fn zeros(&self, n: usize, dtype: DType) -> Result<GpuStorage> {
        let bytes = data_bytes(n, dtype);
        let s = self.alloc(bytes, true)?;
        if bytes > 0 {
            self.recorder()?.clear(self, &s)?;
        }
        Ok(s)
    }

    /// Reads `n` elements of `dtype` back as f32 (submits pending work and waits for it).
    /// The recorder is released while waiting, so other threads keep recording.
    pub(crate) fn download_f32(&self, s: &GpuStorage, dtype: DType, n: usize) -> Result<Vec<f32>> {
        if dtype.is_packed() {
            return Err(Error::Invalid(
                "download_f32 of packed storage (quantized: use download_quant; bf16 is CPU only)"
                    .into(),
            ));
        }
        let bytes = data_bytes(n, dtype);
        if n == 0 {
            return Ok(Vec::new());
        }
        let staging = self.recorder()?.stage_read_back(self, s, bytes)?;
        let (tx, rx) = std::sync::mpsc::channel();
        staging
            .slice(0..bytes)
            .map_async(wgpu::MapMode::Read, move |r| {
                let _ = tx.send(r);
            });
        self.wait()?;
        // With several threads polling, another thread's poll may be the one running this
        // callback, possibly just after our wait returned: keep polling until it has run.
        let deadline = Instant::now() + Duration::from_secs(300);
        let mapped = loop {
            match rx.recv_timeout(Duration::from_millis(1)) {
                Ok(r) => break r,
                Err(RecvTimeoutError::Timeout) => {
                    if Instant::now() > deadline {
                        return Err(Error::Gpu("readback buffer not mapped after 300 s".into()));
                    }
                    let _ = self.device.poll(wgpu::PollType::Poll);
                    self.check()?;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(Error::Gpu(
                        "readback mapping callback dropped by wgpu".into(),
                    ));
                }
            }
        };
        mapped.map_err(|e| Error::Gpu(format!("mapping a readback buffer: {e}")))?;
        let out = {
            let view = staging
                .slice(0..bytes)
                .get_mapped_range()
                .map_err(|e| Error::Gpu(format!("reading a mapped buffer: {e}")))?;
            match dtype {
                DType::F32 => view[..n * 4]
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
                DType::F16 => {
                    let h: Vec<half::f16> = view[..n * 2]
                        .chunks_exact(2)
                        .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])))
                        .collect();
                    let mut out = vec![0f32; n];
                    blip2_kernels::f16_to_f32(&h, &mut out);
                    out
                }
                DType::Q8 | DType::Q4 | DType::BF16 => unreachable!("rejected at the top"),
            }
        };
        staging.unmap();
        self.recorder
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keep_staging(staging);
        Ok(out)
    }
}

/// One wgpu adapter as the system reports it (for listings; `Device::gpu` picks one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdapterSummary {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
}

/// The backends tried in turn when opening or listing adapters: `WGPU_BACKEND`'s when it is
/// set (GL included if it names it), else Vulkan/Metal/DX12 first and GL only if those find
/// nothing. Probing GL initialises EGL, which on a headless Linux machine prints
/// "XDG_RUNTIME_DIR is invalid" twice to stderr from inside Mesa, on every run.
/// The subgroup size the tensor-core kernel runs at, when it may run: the switch is on
/// (no `BLIP2_GPU_NO_COOP=1`), the adapter has the experimental cooperative-matrix feature, f16
/// shaders and a 16×16×16 f16 × f16 → f32 configuration, and one fixed subgroup size (the
/// kernel's workgroup is exactly one subgroup; a subgroup size is never assumed).
fn coop_subgroup(opts: &GpuOptions, adapter: &wgpu::Adapter) -> Option<u32> {
    use wgpu::CooperativeScalarType as S;
    let feats = adapter.features();
    let info = adapter.get_info();
    let has_config = || {
        adapter.cooperative_matrix_properties().iter().any(|p| {
            (p.m_size, p.n_size, p.k_size) == (16, 16, 16)
                && p.ab_type == S::F16
                && p.cr_type == S::F32
        })
    };
    (opts.coop_matrix
        && feats.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX)
        && feats.contains(wgpu::Features::SHADER_F16)
        && info.subgroup_min_size == info.subgroup_max_size
        && (8..=128).contains(&info.subgroup_min_size)
        && has_config())
    .then_some(info.subgroup_min_size)
}

fn backend_tiers() -> Vec<Option<wgpu::Backends>> {
    if std::env::var_os("WGPU_BACKEND").is_some() {
        vec![None]
    } else {
        vec![
            Some(wgpu::Backends::PRIMARY),
            Some(wgpu::Backends::SECONDARY),
        ]
    }
}

/// An instance over `backends` (`None`: as the environment says).
fn instance(backends: Option<wgpu::Backends>) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    if let Some(b) = backends {
        desc.backends = b;
    }
    wgpu::Instance::new(desc)
}

/// Every adapter wgpu can see in the first backend tier that has any (see
/// `backend_tiers`: `WGPU_BACKEND`'s backends, else Vulkan/Metal/DX12, else GL).
pub fn list_adapters() -> Vec<AdapterSummary> {
    let adapters = backend_tiers()
        .into_iter()
        .map(|b| pollster::block_on(instance(b).enumerate_adapters(wgpu::Backends::all())))
        .find(|a| !a.is_empty())
        .unwrap_or_default();
    adapters
        .iter()
        .map(|a| {
            let i = a.get_info();
            let driver = [i.driver.as_str(), i.driver_info.as_str()]
                .iter()
                .filter(|s| !s.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join(" ");
            AdapterSummary {
                name: i.name,
                backend: format!("{:?}", i.backend),
                device_type: format!("{:?}", i.device_type),
                driver,
            }
        })
        .collect()
}

/// The adapter named by `WGPU_ADAPTER_NAME` (substring, case-insensitive), else the one
/// wgpu prefers for `WGPU_POWER_PREF` (default: high performance). Errors list what exists.
async fn pick_adapter(instance: &wgpu::Instance) -> Result<wgpu::Adapter> {
    let describe = |adapters: &[wgpu::Adapter]| -> String {
        if adapters.is_empty() {
            return "no adapters found (is a Vulkan/Metal/DX12 driver installed? on Linux without a GPU, \
                    install mesa-vulkan-drivers for llvmpipe)"
                .to_string();
        }
        let names: Vec<String> = adapters
            .iter()
            .map(|a| {
                let i = a.get_info();
                format!("'{}' ({:?}, {:?})", i.name, i.backend, i.device_type)
            })
            .collect();
        format!("adapters found: {}", names.join(", "))
    };
    let backend_note = match std::env::var("WGPU_BACKEND") {
        Ok(b) => format!(" with WGPU_BACKEND={b}"),
        Err(_) => String::new(),
    };
    if let Ok(want) = std::env::var("WGPU_ADAPTER_NAME") {
        let mut all = instance.enumerate_adapters(wgpu::Backends::all()).await;
        let needle = want.to_lowercase();
        let pos = all
            .iter()
            .position(|a| a.get_info().name.to_lowercase().contains(&needle));
        return match pos {
            Some(i) => Ok(all.swap_remove(i)),
            None => Err(Error::NoAdapter(format!(
                "WGPU_ADAPTER_NAME='{want}' matches no adapter{backend_note}; {}",
                describe(&all)
            ))),
        };
    }
    let power_preference =
        wgpu::PowerPreference::from_env().unwrap_or(wgpu::PowerPreference::HighPerformance);
    match instance
        .request_adapter(&wgpu::RequestAdapterOptions {
            power_preference,
            force_fallback_adapter: false,
            compatible_surface: None,
            // Real limits, not fingerprint-resistant buckets: we want the whole device.
            apply_limit_buckets: false,
        })
        .await
    {
        Ok(a) => Ok(a),
        Err(e) => {
            let all = instance.enumerate_adapters(wgpu::Backends::all()).await;
            Err(Error::NoAdapter(format!(
                "{e}{backend_note}; {}",
                describe(&all)
            )))
        }
    }
}

#[cfg(test)]
mod tests;
