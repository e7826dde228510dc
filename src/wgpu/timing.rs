//! Kernel timing with timestamp queries: each timed run is its own compute pass whose
//! beginning and end write a pair of timestamps.

use super::*;

/// Timestamp slots of one `time_ms` call.
pub(super) struct Session {
    pub(super) queries: wgpu::QuerySet,
    pub(super) used: u32,
}

/// Passes one `time_ms` call can time.
pub(super) const SESSION_PASSES: u32 = 256;

pub(super) fn timestamp_writes(
    timing: Option<(&wgpu::QuerySet, u32)>,
) -> Option<wgpu::ComputePassTimestampWrites<'_>> {
    timing.map(|(qs, i)| wgpu::ComputePassTimestampWrites {
        query_set: qs,
        beginning_of_pass_write_index: Some(i),
        end_of_pass_write_index: Some(i + 1),
    })
}

impl WgpuBackend {
    /// Runs the forward `iters` times, each in its own timed compute pass, and returns the
    /// kernel time of each run in milliseconds (timestamp queries; needs
    /// [`has_timestamps`](Self::has_timestamps)).
    pub fn time_forward(
        &self,
        plan: &Plan,
        q: &WgpuBuffer,
        k: &WgpuBuffer,
        v: &WgpuBuffer,
        o: &mut WgpuBuffer,
        iters: u32,
    ) -> Result<Vec<f64>> {
        self.supports_forward(plan)?;
        check_forward(plan, q, k, v, o)?;
        let bufs = ForwardBuffers::of(q, k, v, o);
        self.timed(iters, |enc, ts| {
            self.record_forward(enc, plan, bufs, Some(ts))
        })
    }

    /// Runs the backward `iters` times, each in its own timed compute pass (all of its
    /// kernels), and returns each run's kernel time in milliseconds.
    pub fn time_backward(
        &self,
        plan: &Plan,
        args: BackwardArgs<'_, WgpuBuffer>,
        iters: u32,
    ) -> Result<Vec<f64>> {
        self.supports_backward(plan)?;
        args.check(plan)?;
        let bufs = BackwardBuffers::of(&args);
        self.timed(iters, |enc, ts| {
            self.record_backward(enc, plan, bufs, Some(ts))
        })
    }

    /// Two timestamp slots of the open `time_ms` session, if one is open and not full.
    pub(super) fn session_slot(&self) -> Option<(wgpu::QuerySet, u32)> {
        let mut guard = lock(&self.session);
        let s = guard.as_mut()?;
        if s.used >= SESSION_PASSES {
            return None;
        }
        s.used += 1;
        Some((s.queries.clone(), 2 * (s.used - 1)))
    }

    pub(super) fn timed(
        &self,
        iters: u32,
        record: impl Fn(&mut wgpu::CommandEncoder, (&wgpu::QuerySet, u32)) -> Result<()>,
    ) -> Result<Vec<f64>> {
        if !self.timestamps {
            return Err(unsupported("timing: the device has no TIMESTAMP_QUERY"));
        }
        let iters = iters.clamp(1, 2048);
        let (qs, enc) = self.scoped(|| {
            let qs = self.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("sigmoid-attn timing"),
                ty: wgpu::QueryType::Timestamp,
                count: 2 * iters,
            });
            let mut enc = self.device.create_command_encoder(&Default::default());
            for i in 0..iters {
                record(&mut enc, (&qs, 2 * i))?;
            }
            Ok((qs, enc))
        })?;
        self.resolve_pairs(enc, &qs, iters)
    }

    /// `Backend::time_ms`: the passes that `enqueue` records while a session is open each
    /// take a pair of timestamp slots (see `session_slot`); returns their summed kernel time.
    /// Without TIMESTAMP_QUERY, the wall clock between two waits for the queue.
    pub(super) fn time_session(&self, enqueue: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
        if !self.timestamps {
            self.synchronize()?;
            let start = std::time::Instant::now();
            enqueue()?;
            self.synchronize()?;
            return Ok(start.elapsed().as_secs_f64() * 1e3);
        }
        let queries = self.scoped(|| {
            Ok(self.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("sigmoid-attn time_ms"),
                ty: wgpu::QueryType::Timestamp,
                count: 2 * SESSION_PASSES,
            }))
        })?;
        *lock(&self.session) = Some(Session { queries, used: 0 });
        let run = enqueue();
        let session = lock(&self.session).take();
        run?;
        let Some(Session { queries, used }) = session else {
            return Err(driver("time_ms: the timing session disappeared"));
        };
        if used == 0 {
            return Ok(0.0);
        }
        let enc = self.device.create_command_encoder(&Default::default());
        Ok(self.resolve_pairs(enc, &queries, used)?.iter().sum())
    }

    /// Submits `enc` followed by a copy of the first `pairs` (begin, end) timestamp pairs of
    /// `queries` to the host, and returns each pair's span in milliseconds.
    fn resolve_pairs(
        &self,
        mut enc: wgpu::CommandEncoder,
        queries: &wgpu::QuerySet,
        pairs: u32,
    ) -> Result<Vec<f64>> {
        let count = 2 * pairs;
        let bytes = 8 * u64::from(count);
        let (resolve, read) = self.scoped(|| {
            let resolve = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size: bytes,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            let read = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size: bytes,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            enc.resolve_query_set(queries, 0..count, &resolve, 0);
            enc.copy_buffer_to_buffer(&resolve, 0, &read, 0, bytes);
            self.queue.submit([enc.finish()]);
            Ok((resolve, read))
        })?;
        let ticks: Vec<u64> = self.read_back(&read, bytes)?;
        drop(resolve);
        let period = f64::from(self.queue.get_timestamp_period());
        Ok(ticks
            .chunks_exact(2)
            .map(|t| t[1].wrapping_sub(t[0]) as f64 * period * 1e-6)
            .collect())
    }
}
