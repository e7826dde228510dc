//! The backward's launch sequence (see `kernels/bwd_sm90.cu`) and its fp32 workspaces, which
//! are allocated once and only grown, so repeated calls do not allocate.

use super::*;

/// The fp32 scratch memory of the backward, kept between calls.
#[derive(Default)]
pub(super) struct Workspace {
    /// dQ accumulated in fp32 (atomic mode).
    pub(super) accum: Option<CudaSlice<u8>>,
    /// Per-CTA partial sums of d_bias.
    pub(super) partial: Option<CudaSlice<u8>>,
}

/// Device addresses of the backward's tensors for [`CudaBackend::backward_raw`], laid out as
/// the plan's strides say (element offsets from these addresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawGradTensors {
    /// Queries.
    pub q: u64,
    /// Keys.
    pub k: u64,
    /// Values.
    pub v: u64,
    /// Gradient of the output.
    pub d_o: u64,
    /// Gradient of the queries (written).
    pub dq: u64,
    /// Gradient of the keys (written).
    pub dk: u64,
    /// Gradient of the values (written).
    pub dv: u64,
    /// Gradient of the per-sequence bias, `batch` f32 values (written), or `None`.
    pub d_bias: Option<u64>,
}

impl CudaBackend {
    /// Device addresses of the backward workspaces (dQ accumulator only when `atomic`), grown
    /// when this plan needs more than the last one, or, without `may_grow` (the raw entry
    /// point, which must not allocate), an error. Reused across calls, which must be ordered
    /// (the backend's stream orders its own).
    pub(super) fn workspace_ptrs(
        &self,
        ws: &mut Workspace,
        l: &BackwardLaunch,
        atomic: bool,
        may_grow: bool,
    ) -> Result<(u64, u64)> {
        let accum_bytes = if atomic { l.accum_elems * 4 } else { 0 };
        let partial_bytes = (l.partial_elems * 4).max(4);
        let grow = |slot: &mut Option<CudaSlice<u8>>, bytes: usize| -> Result<()> {
            if bytes == 0 || slot.as_ref().is_some_and(|s| s.len() >= bytes) {
                return Ok(());
            }
            if !may_grow {
                return Err(Error::InvalidBuffer {
                    tensor: "backward workspace",
                    expected: format!(
                        "{bytes} bytes (call warm_up_backward with this plan, in this dQ mode, \
                         before backward_raw, which does not allocate)"
                    ),
                    got: format!("{} bytes", slot.as_ref().map_or(0, |s| s.len())),
                });
            }
            // The old buffer may still be in use by queued kernels: its free is ordered on the
            // stream, but wait anyway so that peak memory stays bounded.
            if slot.is_some() {
                self.stream
                    .synchronize()
                    .map_err(|e| driver_err("synchronize", e))?;
            }
            *slot = None;
            // SAFETY: the contents are scratch, written before they are read.
            let s = unsafe { self.stream.alloc::<u8>(bytes) }
                .map_err(|e| driver_err("allocating the backward workspace", e))?;
            *slot = Some(s);
            Ok(())
        };
        grow(&mut ws.accum, accum_bytes)?;
        grow(&mut ws.partial, partial_bytes)?;
        let ptr = |slot: &Option<CudaSlice<u8>>| {
            slot.as_ref()
                .map(|s| s.device_ptr(&self.stream).0)
                .unwrap_or(0)
        };
        Ok((if atomic { ptr(&ws.accum) } else { 0 }, ptr(&ws.partial)))
    }

    /// Enqueues the backward kernels `l` describes for `plan` on `stream` (see
    /// kernels/bwd_sm90.cu for the order and what each writes), growing the workspaces if
    /// `may_grow`.
    pub(super) fn launch_backward(
        &self,
        plan: &Plan,
        l: &BackwardLaunch,
        ptrs: RawGradTensors,
        stream: CUstream,
        may_grow: bool,
    ) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| driver_err("binding the context", e))?;
        for (name, p) in [("dq", ptrs.dq), ("dk", ptrs.dk), ("dv", ptrs.dv)] {
            if p % 4 != 0 {
                return Err(Error::Unsupported {
                    backend: BACKEND,
                    what: format!("a {name} address that is not 4-byte aligned"),
                });
            }
        }
        let deterministic = self.is_deterministic();
        let seq_ptr = self.backward_table(l)?;
        // Held until every kernel of this call is enqueued (see `workspace`).
        let mut ws = self.workspace.lock().map_err(|_| poisoned())?;
        let (accum_ptr, partial_ptr) = self.workspace_ptrs(&mut ws, l, !deterministic, may_grow)?;
        let mut params = l.params;
        params.dq_ptr = ptrs.dq;
        params.dk_ptr = ptrs.dk;
        params.dv_ptr = ptrs.dv;
        params.dq_accum_ptr = accum_ptr;
        params.dbias_partial_ptr = partial_ptr;
        params.dbias_ptr = ptrs.d_bias.unwrap_or(0);
        params.seq_ptr = seq_ptr;
        params.atomic_dq = i32::from(!deterministic);

        let (dt, d, t) = (plan.dtype(), plan.head_dim(), l.tiles);
        let block = (t.threads(), 1, 1);
        let nonempty = |g: (u32, u32, u32)| g.0 > 0 && g.1 > 0 && g.2 > 0;
        let launch = |entry: &'static str,
                      grid: (u32, u32, u32),
                      block: (u32, u32, u32),
                      smem: u32,
                      maps: Option<[&TensorMap; 4]>,
                      params: &mut launch::BwdParams|
         -> Result<()> {
            if !nonempty(grid) {
                return Ok(());
            }
            let f = self.function(l.variant, entry)?;
            let mut args: Vec<*mut c_void> = Vec::with_capacity(5);
            if let Some(m) = maps {
                for x in m {
                    args.push(x as *const TensorMap as *mut c_void);
                }
            }
            args.push(params as *mut launch::BwdParams as *mut c_void);
            // SAFETY: the argument list matches the entry's signature in bwd_sm90.cu (four
            // tensor maps for dkdv and dq, then the parameter block); maps, grid and pointers
            // were derived from the plan, whose buffers the caller's CudaBuffers cover.
            unsafe {
                driver_result::launch_kernel(f.cu_function(), grid, block, smem, stream, &mut args)
            }
            .map_err(|e| driver_err(&format!("launching {entry}"), e))
        };

        if !deterministic && l.accum_elems > 0 {
            // SAFETY: accum_ptr addresses at least accum_elems * 4 bytes (workspace_ptrs).
            unsafe { driver_result::memset_d8_async(accum_ptr, 0, l.accum_elems * 4, stream) }
                .map_err(|e| driver_err("clearing the dQ workspace", e))?;
        }
        // Tensor maps of Q, K, V and dO whose boxes are tiles of `q_rows` (Q, dO) and `k_rows`
        // (K, V) rows.
        let maps = |q_rows: usize, k_rows: usize| -> Result<[TensorMap; 4]> {
            Ok([
                encode_map(ptrs.q, dt, d, &l.q_map, q_rows)?,
                encode_map(ptrs.k, dt, d, &l.k_map, k_rows)?,
                encode_map(ptrs.v, dt, d, &l.v_map, k_rows)?,
                encode_map(ptrs.d_o, dt, d, &l.o_map, q_rows)?,
            ])
        };
        launch(
            kernels::BWD_DKDV,
            l.dkdv_grid,
            (t.dkdv_threads(), 1, 1),
            t.dkdv_smem_bytes(d),
            Some(maps(t.query_tile, t.key_block)?.each_ref()),
            &mut params,
        )?;
        if deterministic {
            launch(
                kernels::BWD_DQ,
                l.dq_grid,
                block,
                t.dq_smem_bytes(d),
                Some(maps(t.query_block, t.key_tile)?.each_ref()),
                &mut params,
            )?;
        } else {
            launch(
                kernels::BWD_DQ_CONVERT,
                l.convert_grid,
                block,
                0,
                None,
                &mut params,
            )?;
        }
        if ptrs.d_bias.is_some() {
            launch(
                kernels::BWD_DBIAS,
                (plan.batch() as u32, 1, 1),
                (32, 1, 1),
                0,
                None,
                &mut params,
            )?;
        }
        Ok(())
    }
}
