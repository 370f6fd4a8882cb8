//! The recorder: pending encoder and compute pass, uniform arena, pipeline / layout / bind
//! group caches, submission and readback.

use std::any::{Any, TypeId};
use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU64;
use std::sync::Arc;

use blip2_shaders::{Kernel, PARAMS_BYTES};

use super::{GpuContext, GpuStats, GpuStorage, round_up};
use crate::{Error, Result};

/// Uploads queued with `write_buffer` keep a staging copy alive until the next submit; past
/// this many bytes the recorder submits so loading a large model does not double its memory.
const MAX_PENDING_UPLOAD: u64 = 256 << 20;
/// Readback staging buffers larger than this are not kept for reuse.
const MAX_KEPT_STAGING: u64 = 64 << 20;

/// Compiled pipelines of one kernel family keyed by its typed constants (the consts struct
/// itself): the per-dispatch lookup hashes a few bools and integers, formats and allocates
/// nothing.
type Pipelines<K> = HashMap<K, Arc<wgpu::ComputePipeline>>;

/// A storage binding: `size` bytes (a multiple of 16) of a tensor's buffer from `offset`
/// (a multiple of the storage offset alignment).
pub(crate) struct Bind<'a> {
    pub(crate) s: &'a GpuStorage,
    pub(crate) offset: u64,
    pub(crate) size: u64,
}

impl<'a> Bind<'a> {
    /// The whole tensor.
    pub(crate) fn whole(s: &'a GpuStorage) -> Bind<'a> {
        Bind {
            s,
            offset: 0,
            size: round_up(s.bytes.max(4), 16),
        }
    }

    /// `bytes` from `offset`.
    pub(crate) fn range(s: &'a GpuStorage, offset: u64, bytes: u64) -> Bind<'a> {
        Bind {
            s,
            offset,
            size: round_up(bytes.max(4), 16),
        }
    }
}

pub(crate) struct Recorder {
    // Declared before `encoder`: a pass must end before its encoder goes.
    pass: Option<wgpu::ComputePass<'static>>,
    encoder: Option<wgpu::CommandEncoder>,
    arena: wgpu::Buffer,
    arena_host: Vec<u8>,
    stride: usize,
    slots: usize,
    used: usize,
    upload_bytes: u64,
    layouts: HashMap<(usize, usize), (wgpu::BindGroupLayout, wgpu::PipelineLayout)>,
    /// One `Pipelines<K>` per kernel family, found by a short linear scan of type ids.
    pipelines: Vec<(TypeId, Box<dyn Any + Send>)>,
    bind_groups: HashMap<Vec<u64>, wgpu::BindGroup>,
    bg_epoch: u64,
    staging: BTreeMap<u64, Vec<wgpu::Buffer>>,
    pub(crate) stats: GpuStats,
}

fn scope_error(
    oom: Option<wgpu::Error>,
    val: Option<wgpu::Error>,
    what: impl Fn() -> String,
) -> Result<()> {
    if let Some(e) = oom {
        return Err(Error::OutOfMemory(format!("{}: {e}", what())));
    }
    if let Some(e) = val {
        return Err(Error::Gpu(format!("{}: {e}", what())));
    }
    Ok(())
}

/// Creates a buffer inside out-of-memory and validation error scopes, so a failure is a
/// typed error (`OutOfMemory` or `Gpu`) naming `what` instead of an uncaptured device error.
pub(crate) fn create_buffer_checked(
    device: &wgpu::Device,
    desc: &wgpu::BufferDescriptor<'_>,
    what: impl Fn() -> String,
) -> Result<wgpu::Buffer> {
    let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let val = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let buffer = device.create_buffer(desc);
    let val = pollster::block_on(val.pop());
    let oom = pollster::block_on(oom.pop());
    scope_error(oom, val, what)?;
    Ok(buffer)
}

impl Recorder {
    pub(crate) fn new(
        device: &wgpu::Device,
        limits: &wgpu::Limits,
        max_batch: usize,
    ) -> Result<Recorder> {
        let align = (limits.min_uniform_buffer_offset_alignment as u64).max(16);
        let stride = round_up(PARAMS_BYTES, align) as usize;
        let slots = max_batch.max(1);
        let arena = create_buffer_checked(
            device,
            &wgpu::BufferDescriptor {
                label: Some("blip2 uniform arena"),
                size: (stride * slots) as u64,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            },
            || format!("creating the uniform arena ({} bytes)", stride * slots),
        )?;
        Ok(Recorder {
            pass: None,
            encoder: None,
            arena,
            arena_host: vec![0; stride * slots],
            stride,
            slots,
            used: 0,
            upload_bytes: 0,
            layouts: HashMap::new(),
            pipelines: Vec::new(),
            bind_groups: HashMap::new(),
            bg_epoch: 0,
            staging: BTreeMap::new(),
            stats: GpuStats::default(),
        })
    }

    fn encoder(&mut self, ctx: &GpuContext) -> &mut wgpu::CommandEncoder {
        self.pass = None;
        self.encoder.get_or_insert_with(|| {
            ctx.device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("blip2 ops"),
                })
        })
    }

    fn pass(&mut self, ctx: &GpuContext) -> &mut wgpu::ComputePass<'static> {
        let pass = match self.pass.take() {
            Some(p) => p,
            None => self
                .encoder(ctx)
                .begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("blip2 ops"),
                    timestamp_writes: None,
                })
                .forget_lifetime(),
        };
        self.pass.insert(pass)
    }

    fn layout(
        &mut self,
        ctx: &GpuContext,
        n_ro: usize,
        n_rw: usize,
    ) -> &(wgpu::BindGroupLayout, wgpu::PipelineLayout) {
        self.layouts.entry((n_ro, n_rw)).or_insert_with(|| {
            let mut entries = vec![wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: true,
                    min_binding_size: NonZeroU64::new(PARAMS_BYTES),
                },
                count: None,
            }];
            for i in 0..n_ro + n_rw {
                entries.push(wgpu::BindGroupLayoutEntry {
                    binding: 1 + i as u32,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Storage {
                            read_only: i < n_ro,
                        },
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                });
            }
            let bgl = ctx
                .device
                .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                    label: None,
                    entries: &entries,
                });
            let pl = ctx
                .device
                .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                    label: None,
                    bind_group_layouts: &[Some(&bgl)],
                    immediate_size: 0,
                });
            (bgl, pl)
        })
    }

    fn pipelines<K: Kernel>(&mut self) -> Option<&mut Pipelines<K>> {
        let id = TypeId::of::<K>();
        let (_, map) = self.pipelines.iter_mut().find(|(t, _)| *t == id)?;
        map.downcast_mut::<Pipelines<K>>()
    }

    fn pipeline<K: Kernel>(
        &mut self,
        ctx: &GpuContext,
        kernel: &K,
    ) -> Result<Arc<wgpu::ComputePipeline>> {
        if let Some(p) = self.pipelines::<K>().and_then(|m| m.get(kernel)) {
            return Ok(p.clone());
        }
        let key = kernel.label();
        let text = kernel
            .wgsl()
            .map_err(|e| Error::Gpu(format!("kernel {key}: {e}")))?;
        if let Some(dir) = &ctx.opts.dump_wgsl {
            let name: String = key
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '=' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            std::fs::create_dir_all(dir)
                .and_then(|_| std::fs::write(dir.join(format!("{name}.wgsl")), &text))
                .map_err(|e| {
                    Error::Invalid(format!("BLIP2_GPU_DUMP_WGSL={}: {e}", dir.display()))
                })?;
        }
        let device = ctx.device.clone();
        let (_, layout) = self.layout(ctx, K::READ_ONLY, K::READ_WRITE);
        let val = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(K::NAME),
            source: wgpu::ShaderSource::Wgsl(text.into()),
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(K::NAME),
            layout: Some(layout),
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
        if let Some(e) = pollster::block_on(val.pop()) {
            return Err(Error::Gpu(format!("compiling kernel {key}: {e}")));
        }
        self.stats.pipelines_compiled += 1;
        let p = Arc::new(pipeline);
        if self.pipelines::<K>().is_none() {
            self.pipelines
                .push((TypeId::of::<K>(), Box::new(Pipelines::<K>::new())));
        }
        if let Some(map) = self.pipelines::<K>() {
            map.insert(*kernel, p.clone());
        }
        Ok(p)
    }

    fn bind_group<K: Kernel>(
        &mut self,
        ctx: &GpuContext,
        binds: &[Bind],
    ) -> Result<wgpu::BindGroup> {
        let epoch = ctx.pool.epoch();
        if epoch != self.bg_epoch || self.bind_groups.len() > 8192 {
            self.bind_groups.clear();
            self.bg_epoch = epoch;
        }
        let mut key = Vec::with_capacity(2 + 3 * binds.len());
        key.extend([K::READ_ONLY as u64, K::READ_WRITE as u64]);
        for b in binds {
            key.extend([b.s.buf.id, b.offset, b.size]);
        }
        if ctx.opts.bind_group_cache
            && let Some(bg) = self.bind_groups.get(&key)
        {
            self.stats.bind_group_cache_hits += 1;
            return Ok(bg.clone());
        }
        for b in binds {
            if b.size > ctx.max_binding
                || b.offset % ctx.storage_align != 0
                || b.offset + b.size > b.s.buf.size
            {
                return Err(Error::Gpu(format!(
                    "kernel {}: binding of {} bytes at offset {} (buffer of {}) breaks the limits \
                     (max binding {}, offset alignment {})",
                    K::NAME,
                    b.size,
                    b.offset,
                    b.s.buf.size,
                    ctx.max_binding,
                    ctx.storage_align
                )));
            }
        }
        let device = ctx.device.clone();
        let arena = self.arena.clone();
        let (bgl, _) = self.layout(ctx, K::READ_ONLY, K::READ_WRITE);
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &arena,
                offset: 0,
                size: NonZeroU64::new(PARAMS_BYTES),
            }),
        }];
        for (i, b) in binds.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: 1 + i as u32,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: b.s.buf.raw(),
                    offset: b.offset,
                    size: NonZeroU64::new(b.size),
                }),
            });
        }
        let val = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let bg = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: bgl,
            entries: &entries,
        });
        if let Some(e) = pollster::block_on(val.pop()) {
            return Err(Error::Gpu(format!(
                "binding operands of kernel {}: {e}",
                K::NAME
            )));
        }
        self.stats.bind_groups_created += 1;
        if ctx.opts.bind_group_cache {
            self.bind_groups.insert(key, bg.clone());
        }
        Ok(bg)
    }

    /// Records one dispatch of the variant `kernel` with `params` in the uniform arena and
    /// `binds` (read-only ones first) over `groups` workgroups.
    pub(crate) fn dispatch<K: Kernel>(
        &mut self,
        ctx: &GpuContext,
        kernel: &K,
        params: &K::Params,
        binds: &[Bind],
        groups: [u32; 3],
    ) -> Result<()> {
        const { assert!(size_of::<K::Params>() <= PARAMS_BYTES as usize) };
        if binds.len() != K::READ_ONLY + K::READ_WRITE {
            return Err(Error::Invalid(format!(
                "kernel {}: {} bindings for a signature of {} + {} bindings",
                K::NAME,
                binds.len(),
                K::READ_ONLY,
                K::READ_WRITE
            )));
        }
        if groups.contains(&0) {
            return Ok(());
        }
        let max_groups = ctx.limits.max_compute_workgroups_per_dimension;
        if let Some(&g) = groups.iter().find(|&&g| g > max_groups) {
            return Err(Error::Limit {
                what: format!("workgroups per dimension of kernel {}", K::NAME),
                needed: g as u64,
                limit: max_groups as u64,
            });
        }
        if self.used >= self.slots {
            self.flush(ctx)?;
        }
        let pipeline = self.pipeline(ctx, kernel)?;
        let bg = self.bind_group::<K>(ctx, binds)?;
        let off = self.used * self.stride;
        let bytes = bytemuck::bytes_of(params);
        self.arena_host[off..off + bytes.len()].copy_from_slice(bytes);
        self.used += 1;
        let pass = self.pass(ctx);
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bg, &[off as u32]);
        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        ctx.pool.mark_pending();
        self.stats.dispatches += 1;
        Ok(())
    }

    /// Records zero-filling of a tensor's buffer.
    pub(crate) fn clear(&mut self, ctx: &GpuContext, s: &GpuStorage) -> Result<()> {
        let size = round_up(s.bytes, 4);
        self.encoder(ctx).clear_buffer(s.buf.raw(), 0, Some(size));
        ctx.pool.mark_pending();
        Ok(())
    }

    /// Records a copy of `bytes` (a multiple of 4) between tensor buffers.
    pub(crate) fn copy(
        &mut self,
        ctx: &GpuContext,
        src: &GpuStorage,
        dst: &GpuStorage,
        bytes: u64,
    ) -> Result<()> {
        if bytes > 0 {
            self.encoder(ctx)
                .copy_buffer_to_buffer(src.buf.raw(), 0, dst.buf.raw(), 0, bytes);
            ctx.pool.mark_pending();
        }
        Ok(())
    }

    /// Notes `bytes` queued with `write_buffer`; submits when too much staging is pending.
    pub(crate) fn uploaded(&mut self, ctx: &GpuContext, bytes: u64) -> Result<()> {
        self.upload_bytes += bytes;
        if self.upload_bytes > MAX_PENDING_UPLOAD {
            self.flush(ctx)?;
        }
        Ok(())
    }

    /// Submits everything recorded (and queued uploads) as one command buffer.
    pub(crate) fn flush(&mut self, ctx: &GpuContext) -> Result<()> {
        self.pass = None;
        let encoder = self.encoder.take();
        if encoder.is_none() && self.upload_bytes == 0 {
            return ctx.check();
        }
        if self.used > 0 {
            ctx.queue
                .write_buffer(&self.arena, 0, &self.arena_host[..self.used * self.stride]);
        }
        let oom = ctx.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let val = ctx.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let had_commands = encoder.is_some();
        let buffers: Vec<wgpu::CommandBuffer> = encoder.map(|e| e.finish()).into_iter().collect();
        ctx.queue.submit(buffers);
        let val = pollster::block_on(val.pop());
        let oom = pollster::block_on(oom.pop());
        let dispatches = self.used;
        self.used = 0;
        self.upload_bytes = 0;
        ctx.pool.submitted();
        if had_commands {
            self.stats.submits += 1;
        }
        scope_error(oom, val, || {
            format!("submitting {dispatches} recorded dispatches")
        })?;
        ctx.check()
    }

    /// Copies `bytes` of a tensor into a mappable staging buffer and submits everything
    /// recorded; the caller maps it (without holding the recorder) and hands it back.
    pub(crate) fn stage_read_back(
        &mut self,
        ctx: &GpuContext,
        s: &GpuStorage,
        bytes: u64,
    ) -> Result<wgpu::Buffer> {
        self.stats.readback_bytes += bytes;
        let size = round_up(bytes, 256);
        let reuse = self
            .staging
            .range(size..=size + size / 4)
            .next()
            .map(|(k, _)| *k);
        let kept = reuse.and_then(|k| {
            let list = self.staging.get_mut(&k)?;
            let b = list.pop();
            if list.is_empty() {
                self.staging.remove(&k);
            }
            b
        });
        let staging = match kept {
            Some(b) => b,
            None => create_buffer_checked(
                &ctx.device,
                &wgpu::BufferDescriptor {
                    label: Some("blip2 readback"),
                    size,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                },
                || format!("allocating a readback buffer of {size} bytes"),
            )?,
        };
        self.encoder(ctx)
            .copy_buffer_to_buffer(s.buf.raw(), 0, &staging, 0, bytes);
        self.flush(ctx)?;
        Ok(staging)
    }

    /// Keeps an unmapped staging buffer for later readbacks.
    pub(crate) fn keep_staging(&mut self, staging: wgpu::Buffer) {
        let size = staging.size();
        if size <= MAX_KEPT_STAGING {
            self.staging.entry(size).or_default().push(staging);
        }
    }
}
