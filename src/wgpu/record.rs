//! Recording the kernels into a command encoder: bindings, uniforms, bind groups and the
//! dispatches of the forward and backward, on the backend's or the caller's buffers.

use super::*;

/// The tensors of one forward pass, as the application's wgpu buffers (`STORAGE` usage).
#[derive(Debug, Clone, Copy)]
pub struct ForwardBuffers<'a> {
    /// Queries.
    pub q: &'a wgpu::Buffer,
    /// Keys.
    pub k: &'a wgpu::Buffer,
    /// Values.
    pub v: &'a wgpu::Buffer,
    /// Output.
    pub o: &'a wgpu::Buffer,
}

/// The tensors of one backward pass, as the application's wgpu buffers (`STORAGE` usage).
#[derive(Debug, Clone, Copy)]
pub struct BackwardBuffers<'a> {
    /// Queries.
    pub q: &'a wgpu::Buffer,
    /// Keys.
    pub k: &'a wgpu::Buffer,
    /// Values.
    pub v: &'a wgpu::Buffer,
    /// Gradient of the output.
    pub d_o: &'a wgpu::Buffer,
    /// Gradient of the queries (written).
    pub dq: &'a wgpu::Buffer,
    /// Gradient of the keys (written).
    pub dk: &'a wgpu::Buffer,
    /// Gradient of the values (written).
    pub dv: &'a wgpu::Buffer,
    /// Gradient of the per-sequence bias, f32 × batch (written), if wanted.
    pub d_bias: Option<&'a wgpu::Buffer>,
}

impl<'a> ForwardBuffers<'a> {
    /// The wgpu buffers behind the backend-owned tensors of a `Backend::forward` call.
    pub(super) fn of(
        q: &'a WgpuBuffer,
        k: &'a WgpuBuffer,
        v: &'a WgpuBuffer,
        o: &'a WgpuBuffer,
    ) -> Self {
        ForwardBuffers {
            q: &q.buffer,
            k: &k.buffer,
            v: &v.buffer,
            o: &o.buffer,
        }
    }
}

impl<'a> BackwardBuffers<'a> {
    /// The wgpu buffers behind the backend-owned tensors of a `Backend::backward` call.
    pub(super) fn of(a: &'a BackwardArgs<'_, WgpuBuffer>) -> Self {
        BackwardBuffers {
            q: &a.q.buffer,
            k: &a.k.buffer,
            v: &a.v.buffer,
            d_o: &a.d_o.buffer,
            dq: &a.dq.buffer,
            dk: &a.dk.buffer,
            dv: &a.dv.buffer,
            d_bias: a.d_bias.as_deref().map(|b| &b.buffer),
        }
    }
}

impl WgpuBackend {
    /// The binding of a tensor of `elems` elements: the part of `buf` it occupies, or a dummy
    /// for an empty tensor.
    pub(super) fn binding<'a>(
        &'a self,
        tensor: &'static str,
        buf: &'a wgpu::Buffer,
        elems: usize,
        dtype: DType,
    ) -> Result<wgpu::BindingResource<'a>> {
        let bytes = (elems * dtype.size_bytes()) as u64;
        if bytes == 0 {
            return Ok(self.dummy.as_entire_binding());
        }
        if buf.size() < bytes {
            return Err(Error::InvalidBuffer {
                tensor,
                expected: format!("at least {bytes} bytes"),
                got: format!("{} bytes", buf.size()),
            });
        }
        if !buf.usage().contains(wgpu::BufferUsages::STORAGE) {
            return Err(Error::InvalidBuffer {
                tensor,
                expected: "a buffer with STORAGE usage".into(),
                got: format!("usage {:?}", buf.usage()),
            });
        }
        Ok(wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: buf,
            offset: 0,
            size: wgpu::BufferSize::new(bytes),
        }))
    }

    pub(super) fn uniform(&self, params: &Params) -> wgpu::Buffer {
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("sigmoid-attn params"),
                contents: bytemuck::bytes_of(params),
                usage: wgpu::BufferUsages::UNIFORM,
            })
    }

    pub(super) fn seq_buffer(&self, plan: &Plan) -> wgpu::Buffer {
        let table = seq_table(plan);
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("sigmoid-attn sequences"),
                contents: bytemuck::cast_slice(&table),
                usage: wgpu::BufferUsages::STORAGE,
            })
    }

    pub(super) fn bind_group(
        &self,
        pipeline: &wgpu::ComputePipeline,
        resources: Vec<wgpu::BindingResource<'_>>,
    ) -> wgpu::BindGroup {
        let entries: Vec<wgpu::BindGroupEntry<'_>> = resources
            .into_iter()
            .enumerate()
            .map(|(i, resource)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource,
            })
            .collect();
        self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        })
    }

    /// Records the forward of `plan` into `encoder`, on the application's buffers (which must
    /// hold `plan.q_elems()` … elements of `plan.dtype()`). Nothing is submitted. Errors about
    /// the plan or the buffers are returned here; device errors surface in the application's
    /// error scopes or handler.
    pub fn encode_forward(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        plan: &Plan,
        bufs: ForwardBuffers<'_>,
    ) -> Result<()> {
        self.supports_forward(plan)?;
        self.record_forward(encoder, plan, bufs, None)
    }

    /// Records the backward of `plan` into `encoder`, on the application's buffers. Nothing is
    /// submitted.
    pub fn encode_backward(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        plan: &Plan,
        bufs: BackwardBuffers<'_>,
    ) -> Result<()> {
        self.supports_backward(plan)?;
        self.record_backward(encoder, plan, bufs, None)
    }

    pub(super) fn record_forward(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        plan: &Plan,
        bufs: ForwardBuffers<'_>,
        timing: Option<(&wgpu::QuerySet, u32)>,
    ) -> Result<()> {
        let dt = plan.dtype();
        let (pipeline, rows) = match self.coop_tiles(plan) {
            Some(t) => {
                let key = CoopKey {
                    kernel: CoopKernel::Forward,
                    storage: self.storage(dt),
                    tiles: t,
                    causal: plan.causal(),
                    fast: plan.sigmoid() == crate::SigmoidMode::Fast,
                };
                let p = self
                    .pipelines
                    .get_coop(&self.device, key, self.bounds_checks)?;
                (p, t.rows())
            }
            None => {
                let tiles = self.tiles(Kernel::Forward, plan.head_dim())?;
                (self.pipeline(Kernel::Forward, plan, tiles)?, tiles.rows)
            }
        };
        let params = Params::new(plan, 0).ok_or_else(|| unsupported("strides"))?;
        let (ubuf, sbuf) = (self.uniform(&params), self.seq_buffer(plan));
        let bg = self.bind_group(
            &pipeline,
            vec![
                ubuf.as_entire_binding(),
                sbuf.as_entire_binding(),
                self.binding("q", bufs.q, plan.q_elems(), dt)?,
                self.binding("k", bufs.k, plan.k_elems(), dt)?,
                self.binding("v", bufs.v, plan.v_elems(), dt)?,
                self.binding("o", bufs.o, plan.o_elems(), dt)?,
            ],
        );
        let n_tiles = max_rows_q(plan).div_ceil(rows as usize) as u32;
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("sigmoid-attn forward"),
            timestamp_writes: timestamp_writes(timing),
        });
        if n_tiles > 0 {
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bg, &[]);
            pass.dispatch_workgroups(n_tiles, plan.heads() as u32, plan.batch() as u32);
        }
        Ok(())
    }

    pub(super) fn record_backward(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        plan: &Plan,
        bufs: BackwardBuffers<'_>,
        timing: Option<(&wgpu::QuerySet, u32)>,
    ) -> Result<()> {
        let dt = plan.dtype();
        let d = plan.head_dim();
        let tk = self.tiles(Kernel::BackwardDkDv, d)?;
        // (pipeline, rows per workgroup) of the dQ and the dK/dV kernels. Both paths bind the
        // same resources and leave the same d_bias partials, so the rest is shared.
        let ((p_dq, q_rows), (p_dkdv, k_rows)) = match self.coop_backward_tiles(plan) {
            Some((cq, ck)) => {
                let get = |kernel, tiles: CoopTiles| {
                    let key = CoopKey {
                        kernel,
                        storage: self.storage(dt),
                        tiles,
                        causal: plan.causal(),
                        fast: plan.sigmoid() == crate::SigmoidMode::Fast,
                    };
                    let p = self
                        .pipelines
                        .get_coop(&self.device, key, self.bounds_checks)?;
                    Ok::<_, Error>((p, tiles.rows()))
                };
                (
                    get(CoopKernel::BackwardDq, cq)?,
                    get(CoopKernel::BackwardDkDv, ck)?,
                )
            }
            None => {
                let tq = self.tiles(Kernel::BackwardDq, d)?;
                (
                    (self.pipeline(Kernel::BackwardDq, plan, tq)?, tq.rows),
                    (self.pipeline(Kernel::BackwardDkDv, plan, tk)?, tk.rows),
                )
            }
        };
        let q_tiles = max_rows_q(plan).div_ceil(q_rows as usize) as u32;
        let k_tiles = max_rows_k(plan).div_ceil(k_rows as usize) as u32;
        let n_part = k_tiles * plan.kv_heads() as u32;
        let params = Params::new(plan, n_part).ok_or_else(|| unsupported("strides"))?;
        let (ubuf, sbuf) = (self.uniform(&params), self.seq_buffer(plan));
        let part = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("sigmoid-attn d_bias partials"),
            size: (4 * plan.batch() as u64 * u64::from(n_part)).max(16),
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let bg_dq = self.bind_group(
            &p_dq,
            vec![
                ubuf.as_entire_binding(),
                sbuf.as_entire_binding(),
                self.binding("q", bufs.q, plan.q_elems(), dt)?,
                self.binding("k", bufs.k, plan.k_elems(), dt)?,
                self.binding("v", bufs.v, plan.v_elems(), dt)?,
                self.binding("d_o", bufs.d_o, plan.o_elems(), dt)?,
                self.binding("dq", bufs.dq, plan.q_elems(), dt)?,
            ],
        );
        let bg_dkdv = self.bind_group(
            &p_dkdv,
            vec![
                ubuf.as_entire_binding(),
                sbuf.as_entire_binding(),
                self.binding("q", bufs.q, plan.q_elems(), dt)?,
                self.binding("k", bufs.k, plan.k_elems(), dt)?,
                self.binding("v", bufs.v, plan.v_elems(), dt)?,
                self.binding("d_o", bufs.d_o, plan.o_elems(), dt)?,
                self.binding("dk", bufs.dk, plan.k_elems(), dt)?,
                self.binding("dv", bufs.dv, plan.v_elems(), dt)?,
                part.as_entire_binding(),
            ],
        );
        let dbias = match bufs.d_bias {
            Some(db) => {
                let p = self.pipeline(Kernel::BackwardDbias, plan, tk)?;
                let bg = self.bind_group(
                    &p,
                    vec![
                        ubuf.as_entire_binding(),
                        part.as_entire_binding(),
                        self.binding("d_bias", db, plan.batch(), DType::F32)?,
                    ],
                );
                Some((p, bg))
            }
            None => None,
        };
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("sigmoid-attn backward"),
            timestamp_writes: timestamp_writes(timing),
        });
        if k_tiles > 0 {
            pass.set_pipeline(&p_dkdv);
            pass.set_bind_group(0, &bg_dkdv, &[]);
            pass.dispatch_workgroups(k_tiles, plan.kv_heads() as u32, plan.batch() as u32);
        }
        if q_tiles > 0 {
            pass.set_pipeline(&p_dq);
            pass.set_bind_group(0, &bg_dq, &[]);
            pass.dispatch_workgroups(q_tiles, plan.heads() as u32, plan.batch() as u32);
        }
        if let Some((p, bg)) = &dbias {
            pass.set_pipeline(p);
            pass.set_bind_group(0, bg, &[]);
            pass.dispatch_workgroups(plan.batch() as u32, 1, 1);
        }
        Ok(())
    }
}
