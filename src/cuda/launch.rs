//! Kernel parameters (`#[repr(C)]` twins of `kernels/params.cuh`), TMA tensor maps, and the
//! translation of a [`Plan`] into the launches of the forward and backward kernels.

use std::ffi::c_void;
use std::mem::MaybeUninit;

use cudarc::driver::sys;

use super::kernels::{BwdTiles, Kernel, TileConfig, Variant, FWD_ENTRY, FWD_ORDERED_ENTRY};
use super::schedule;
use crate::{DType, Error, Plan, Result, Strides};

const BACKEND: &str = "cuda";

/// Per-sequence description; twin of `sa::SeqInfo` (24 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct SeqInfoRaw {
    pub q_start: i32,
    pub k_start: i32,
    pub len_q: i32,
    pub len_k: i32,
    pub rows: i32,
    pub bias: f32,
}
const _: () = assert!(std::mem::size_of::<SeqInfoRaw>() == 24);

impl SeqInfoRaw {
    /// The little-endian bytes the kernel reads.
    fn to_bytes(self) -> [u8; 24] {
        let mut b = [0u8; 24];
        let words = [
            self.q_start.to_le_bytes(),
            self.k_start.to_le_bytes(),
            self.len_q.to_le_bytes(),
            self.len_k.to_le_bytes(),
            self.rows.to_le_bytes(),
            self.bias.to_le_bytes(),
        ];
        for (i, w) in words.iter().enumerate() {
            b[4 * i..4 * i + 4].copy_from_slice(w);
        }
        b
    }
}

/// Forward kernel parameters; twin of `sa::FwdParams` (96 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct FwdParams {
    pub o_ptr: u64,
    pub seq_ptr: u64,
    pub o_stride_batch: i64,
    pub o_stride_seq: i64,
    pub o_stride_head: i64,
    pub batch: i32,
    pub heads: i32,
    pub kv_group: i32,
    pub causal: i32,
    pub scale: f32,
    pub uniform: SeqInfoRaw,
    pub map_batch: i32,
    /// Query tiles per (head, batch element): the first extent of `ForwardLaunch::grid`.
    pub m_tiles: i32,
    /// Slots of the work order that follows the per-sequence table (0: no order).
    pub order_units: i32,
}
const _: () = assert!(std::mem::size_of::<FwdParams>() == 96);

/// A `CUtensorMap` as the kernel takes it (`sa::TensorMap`): 128 opaque bytes.
#[repr(C, align(64))]
#[derive(Debug, Clone, Copy)]
pub(crate) struct TensorMap(pub [u64; 16]);

/// The global view of one tensor that a tensor map describes: dims (D, seq, heads, batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MapShape {
    pub seq_extent: usize,
    pub heads: usize,
    /// 1 for packed input (the batch coordinate is always 0).
    pub batch_extent: usize,
    pub strides: Strides,
}

/// Everything about one forward launch that depends on the plan only (not on pointers).
#[derive(Debug, Clone)]
pub(crate) struct ForwardLaunch {
    pub variant: Variant,
    pub tiles: TileConfig,
    /// Output tiles: (query tiles, heads, batch elements).
    pub grid: (u32, u32, u32),
    /// Parameters with `o_ptr`, `seq_ptr` and `order_units` left at 0 (see [`Self::table`]).
    pub params: FwdParams,
    /// The sequences when units of tiles differ in work (sequences differ, or have padding
    /// rows): the kernel reads them, then the work order; empty when `params.uniform`
    /// describes every sequence and the units walk in their natural order.
    pub seqs: Vec<SeqInfoRaw>,
    pub q_map: MapShape,
    pub k_map: MapShape,
    pub v_map: MapShape,
}

impl ForwardLaunch {
    /// The launch grid: persistent, at most one CTA per SM (which the kernel's shared memory
    /// leaves room for; CTA c computes the units c, c + grid, ... of output tiles: one tile, or
    /// a pair of a long and a short tile when causal, so that a tile's loads overlap the
    /// previous tile's last products). Units either all have the same work or the plan brings
    /// a work order that deals them out evenly ([`schedule::assign`]; H200, D=64 N=16k with
    /// one sequence of 12317 rows: the fixed stride over unsorted units gave the busiest CTA
    /// 14% more than the average work: 504 TFLOPS; one CTA per unit 531-537, the units
    /// heaviest first 539-541). With an order, the grid is the one its slots were laid out
    /// for ([`Self::table`] with the same SM count).
    /// `order_units`: the slots of the work order ([`Self::table`]), 0 without one.
    pub fn launch_grid(&self, sm_count: u32, order_units: i32) -> (u32, u32, u32) {
        let units = if self.ordered() {
            order_units.max(0) as u64
        } else {
            self.units()
        };
        (units.min(u64::from(sm_count)).max(1) as u32, 1, 1)
    }

    /// Units of the tile walk in their natural order: output tiles, in pairs when causal.
    fn units(&self) -> u64 {
        let (m, h, b) = self.grid;
        let tiles = u64::from(m) * u64::from(h) * u64::from(b);
        tiles.div_ceil(tile_group(self.params.causal != 0) as u64)
    }

    /// Units differ in work, so the plan brings a work order (after the sequences in the
    /// table) and launches the entry that walks it.
    pub fn ordered(&self) -> bool {
        !self.seqs.is_empty()
    }

    /// The kernel entry for this plan: [`FWD_ORDERED_ENTRY`] walks the work order,
    /// [`FWD_ENTRY`] the units in their natural order (fwd_sm90.cu, for_each_tile).
    pub fn entry(&self) -> &'static str {
        if self.ordered() {
            FWD_ORDERED_ENTRY
        } else {
            FWD_ENTRY
        }
    }

    /// What identifies [`Self::table`] on one device, cheap enough to build at every call (the
    /// order itself takes a sort and a schedule over the units: the backend builds it once per
    /// key and keeps it on the device): the sequences and what the order depends on besides
    /// them and the SM count. `None`: no table.
    pub fn table_key(&self) -> Option<Vec<u8>> {
        if self.seqs.is_empty() {
            return None;
        }
        let p = &self.params;
        // 21 + 24 n bytes: odd, so never the key of a backward table (32 bytes a sequence).
        let mut key = Vec::with_capacity(1 + 20 + 24 * self.seqs.len());
        key.push(b'F');
        for x in [p.heads, p.m_tiles, p.causal] {
            key.extend_from_slice(&x.to_le_bytes());
        }
        for x in [self.tiles.block_m, self.tiles.block_n] {
            key.extend_from_slice(&(x as u32).to_le_bytes());
        }
        key.extend(self.seqs.iter().flat_map(|r| r.to_bytes()));
        Some(key)
    }

    /// The table the kernel reads at `seq_ptr`: the sequences, then the work order if the plan
    /// has one (u32 unit indices in the slots of `ctas` CTAs, [`schedule::assign`]); and the
    /// number of slots (`order_units`, 0 without an order). `ctas`: the SM count of the
    /// device, which [`Self::launch_grid`] then gives the same grid.
    pub fn table(&self, ctas: u32) -> (Vec<u8>, i32) {
        let p = &self.params;
        let mut bytes: Vec<u8> = self.seqs.iter().flat_map(|r| r.to_bytes()).collect();
        if !self.ordered() {
            return (bytes, 0);
        }
        let units = work_order(
            &self.seqs,
            p.heads as usize,
            p.m_tiles as usize,
            &self.tiles,
            p.causal != 0,
        );
        // A unit index past the last: its tiles lie past the kernel's tile count.
        let empty = self.units() as u32;
        let slots = schedule::assign(&units, ctas as usize, empty);
        bytes.extend(slots.iter().flat_map(|u| u.to_le_bytes()));
        (bytes, slots.len() as i32)
    }
}

/// Tiles per unit of the forward's tile walk: causal tiles go in pairs of a long and a short one
/// (fwd_sm90.cu, tile_coord and for_each_tile).
fn tile_group(causal: bool) -> usize {
    if causal {
        2
    } else {
        1
    }
}

/// The forward's units (see [`tile_group`]) that have rows, with their work, heaviest first
/// (ties in their natural order, so that the tiles of one head and sequence stay together and
/// share K/V in L2). A tile's work is counted as its key tiles plus one for its Q load and O
/// store (a tile past `len_q` only writes zeros). Mirrors `tile_coord` and `kv_tile_range` of
/// fwd_sm90.cu.
fn work_order(
    seqs: &[SeqInfoRaw],
    heads: usize,
    m_tiles: usize,
    tiles: &TileConfig,
    causal: bool,
) -> Vec<(u64, u32)> {
    let (block_m, block_n) = (tiles.block_m as i64, tiles.block_n as i64);
    let n_tiles = m_tiles * heads * seqs.len();
    let tile_work = |t: usize| -> u64 {
        let s = &seqs[t / m_tiles / heads];
        let m = query_block(t % m_tiles, m_tiles, causal) as i64;
        let q0 = m * block_m;
        if q0 >= i64::from(s.rows) {
            return 0;
        }
        let mut n_end = (i64::from(s.len_k) + block_n - 1) / block_n;
        if causal {
            let q_last = (q0 + block_m).min(i64::from(s.len_q)) - 1;
            n_end = n_end.min(q_last.div_euclid(block_n) + 1);
        }
        let keys = if q0 < i64::from(s.len_q) {
            n_end.max(0)
        } else {
            0
        };
        1 + keys as u64
    };
    let group = tile_group(causal);
    let mut units: Vec<(u64, u32)> = (0..n_tiles.div_ceil(group))
        .map(|u| {
            let work = (u * group..((u + 1) * group).min(n_tiles))
                .map(tile_work)
                .sum();
            (work, u as u32)
        })
        .filter(|&(work, _)| work > 0)
        .collect();
    units.sort_unstable_by_key(|&(work, u)| (std::cmp::Reverse(work), u));
    units
}

/// The query block of the j-th tile of a (head, sequence): j itself, or when causal the
/// longest and the shortest block left in turn (fwd_sm90.cu, tile_coord).
fn query_block(j: usize, m_tiles: usize, causal: bool) -> usize {
    match (causal, j % 2) {
        (false, _) => j,
        (true, 1) => j / 2,
        (true, _) => m_tiles - 1 - j / 2,
    }
}

fn unsupported(what: impl Into<String>) -> Error {
    Error::Unsupported {
        backend: BACKEND,
        what: what.into(),
    }
}

fn to_i32(x: usize, what: &str) -> Result<i32> {
    i32::try_from(x).map_err(|_| unsupported(format!("{what} = {x} (above 2^31 - 1)")))
}

/// TMA needs 16-byte multiples for every stride it walks.
fn check_map_strides(name: &str, s: &Strides, packed: bool, es: usize) -> Result<()> {
    let mut all = vec![("seq", s.seq), ("head", s.head)];
    if !packed {
        all.push(("batch", s.batch));
    }
    for (which, v) in all {
        if (v * es) % 16 != 0 {
            return Err(unsupported(format!(
                "{name} {which} stride of {v} elements (the TMA path needs multiples of 16 bytes)"
            )));
        }
    }
    Ok(())
}

/// Checks that the plan fits the Hopper forward kernel and resolves its launch.
pub(crate) fn describe_forward(plan: &Plan) -> Result<ForwardLaunch> {
    let dtype = plan.dtype();
    if !matches!(dtype, DType::F16 | DType::BF16) {
        return Err(unsupported(format!(
            "dtype {dtype} (the Hopper kernels take f16 and bf16)"
        )));
    }
    let d = plan.head_dim();
    let tiles = TileConfig::for_head_dim(d)
        .ok_or_else(|| unsupported(format!("head dim {d} (the Hopper kernels have 64 and 128)")))?;
    let variant = Variant {
        kernel: Kernel::Forward,
        dtype,
        head_dim: d,
        sigmoid: plan.sigmoid(),
    };
    let es = dtype.size_bytes();
    let packed = plan.is_packed();
    let st = plan.strides();
    check_map_strides("q", &st.q, packed, es)?;
    check_map_strides("k", &st.k, packed, es)?;
    check_map_strides("v", &st.v, packed, es)?;
    let o = st.o;
    if o.seq % 2 != 0 || o.head % 2 != 0 || (!packed && o.batch % 2 != 0) {
        return Err(unsupported(
            "odd O strides (O is stored in pairs of elements)",
        ));
    }
    let (batch, heads, kv_heads) = (plan.batch(), plan.heads(), plan.kv_heads());
    if batch > 65_535 || heads > 65_535 {
        return Err(unsupported(format!(
            "{batch} sequences x {heads} heads (grid limit 65535 each)"
        )));
    }
    to_i32(plan.seq_q(), "query rows")?;
    to_i32(plan.seq_k(), "key rows")?;

    let mut raw = Vec::with_capacity(batch);
    for (s, &bias) in plan.seqs().iter().zip(plan.bias()) {
        raw.push(SeqInfoRaw {
            q_start: to_i32(s.q_start, "query start")?,
            k_start: to_i32(s.k_start, "key start")?,
            len_q: to_i32(s.len_q, "query length")?,
            len_k: to_i32(s.len_k, "key length")?,
            rows: to_i32(s.rows_q, "query rows")?,
            bias,
        });
    }
    let max_rows = plan.seqs().iter().map(|s| s.rows_q).max().unwrap_or(0);
    let m_tiles = max_rows.div_ceil(tiles.block_m);
    // The kernel numbers its tiles with 32-bit integers (and the grid's x extent holds them).
    to_i32(m_tiles * heads * batch, "output tiles")?;
    let uniform = raw.first().copied().unwrap_or_default();
    let is_uniform = raw.iter().all(|r| r.to_bytes() == uniform.to_bytes());
    // Every unit has the same work: one description for every sequence, and no padding rows
    // (their tiles only write zeros).
    let even = is_uniform && uniform.len_q == uniform.rows;
    let seqs = if even { Vec::new() } else { raw };

    let params = FwdParams {
        o_ptr: 0,
        seq_ptr: 0,
        o_stride_batch: if packed { 0 } else { o.batch as i64 },
        o_stride_seq: o.seq as i64,
        o_stride_head: o.head as i64,
        batch: batch as i32,
        heads: heads as i32,
        kv_group: (heads / kv_heads) as i32,
        causal: plan.causal() as i32,
        scale: plan.scale(),
        uniform,
        map_batch: if packed { 0 } else { 1 },
        m_tiles: to_i32(m_tiles, "query tiles")?,
        order_units: 0,
    };
    let batch_extent = if packed { 1 } else { batch };
    let map = |seq_extent, heads, strides| MapShape {
        seq_extent,
        heads,
        batch_extent,
        strides,
    };
    Ok(ForwardLaunch {
        variant,
        tiles,
        grid: (m_tiles as u32, heads as u32, batch as u32),
        params,
        seqs,
        q_map: map(plan.seq_q(), heads, st.q),
        k_map: map(plan.seq_k(), kv_heads, st.k),
        v_map: map(plan.seq_k(), kv_heads, st.v),
    })
}

/// Per-sequence description for the backward; twin of `sa::BwdSeqInfo` (32 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct BwdSeqInfoRaw {
    pub q_start: i32,
    pub k_start: i32,
    pub len_q: i32,
    pub len_k: i32,
    pub rows_q: i32,
    pub rows_k: i32,
    pub bias: f32,
    /// First 64-row tile of the sequence in the dQ workspace (packed input; 0 when padded).
    pub accum_tile: i32,
}
const _: () = assert!(std::mem::size_of::<BwdSeqInfoRaw>() == 32);

impl BwdSeqInfoRaw {
    /// The little-endian bytes the kernels read.
    fn to_bytes(self) -> [u8; 32] {
        let mut b = [0u8; 32];
        let words = [
            self.q_start.to_le_bytes(),
            self.k_start.to_le_bytes(),
            self.len_q.to_le_bytes(),
            self.len_k.to_le_bytes(),
            self.rows_q.to_le_bytes(),
            self.rows_k.to_le_bytes(),
            self.bias.to_le_bytes(),
            self.accum_tile.to_le_bytes(),
        ];
        for (i, w) in words.iter().enumerate() {
            b[4 * i..4 * i + 4].copy_from_slice(w);
        }
        b
    }
}

/// Backward kernel parameters; twin of `sa::BwdParams` (208 bytes). Strides in elements.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct BwdParams {
    pub dq_ptr: u64,
    pub dk_ptr: u64,
    pub dv_ptr: u64,
    pub dq_accum_ptr: u64,
    pub dbias_partial_ptr: u64,
    pub dbias_ptr: u64,
    pub seq_ptr: u64,
    pub dq_stride_batch: i64,
    pub dq_stride_seq: i64,
    pub dq_stride_head: i64,
    pub dk_stride_batch: i64,
    pub dk_stride_seq: i64,
    pub dk_stride_head: i64,
    pub dv_stride_batch: i64,
    pub dv_stride_seq: i64,
    pub dv_stride_head: i64,
    pub accum_tiles_batch: i64,
    pub batch: i32,
    pub heads: i32,
    pub kv_heads: i32,
    pub kv_group: i32,
    pub causal: i32,
    pub scale: f32,
    pub key_blocks: i32,
    pub map_batch: i32,
    pub atomic_dq: i32,
    pub pad0: i32,
    pub uniform: BwdSeqInfoRaw,
}
const _: () = assert!(std::mem::size_of::<BwdParams>() == 208);

/// Rows of one tile of the fp32 dQ workspace (the dK/dV kernel's query tile).
const ACCUM_TILE_ROWS: usize = 64;

/// Everything about one backward call that depends on the plan only (not on pointers or on
/// the deterministic switch).
#[derive(Debug, Clone)]
pub(crate) struct BackwardLaunch {
    pub variant: Variant,
    pub tiles: BwdTiles,
    /// dK/dV kernel: (key blocks, kv heads, batch).
    pub dkdv_grid: (u32, u32, u32),
    /// Deterministic dQ kernel: (query blocks, heads, batch).
    pub dq_grid: (u32, u32, u32),
    /// dQ conversion kernel (atomic mode): (64-row workspace tiles, heads, batch).
    pub convert_grid: (u32, u32, u32),
    /// Parameters with every pointer left at 0 and `atomic_dq` at 0.
    pub params: BwdParams,
    /// Per-sequence table when sequences differ; `None` when `params.uniform` describes all.
    pub seq_table: Option<Vec<u8>>,
    /// f32 elements of the dQ workspace (atomic mode).
    pub accum_elems: usize,
    /// f32 elements of the d_bias partial sums (batch x kv heads x key blocks).
    pub partial_elems: usize,
    pub q_map: MapShape,
    pub k_map: MapShape,
    pub v_map: MapShape,
    pub o_map: MapShape,
}

/// Checks that the plan fits the Hopper backward kernels and resolves their launches.
pub(crate) fn describe_backward(plan: &Plan) -> Result<BackwardLaunch> {
    // Same dtype, head dim, stride and size rules as the forward (dO is read through a tensor
    // map like Q; dQ, dK, dV are written in pairs through the strides of Q, K, V).
    let fwd = describe_forward(plan)?;
    let packed = plan.is_packed();
    let es = plan.dtype().size_bytes();
    let st = plan.strides();
    check_map_strides("o", &st.o, packed, es)?;
    let tiles = BwdTiles::for_head_dim(plan.head_dim());
    let d = plan.head_dim();
    let (batch, heads, kv_heads) = (plan.batch(), plan.heads(), plan.kv_heads());
    to_i32(plan.seq_q(), "query rows")?;
    to_i32(plan.seq_k(), "key rows")?;

    // The dQ workspace holds whole 64-row tiles (kernels/bwd_sm90.cu, "dQ workspace"): padded
    // input gives every sequence ceil(seq_q / 64) of them; packed sequences follow each other.
    let accum_tiles_batch = plan.seq_q().div_ceil(ACCUM_TILE_ROWS);
    let mut accum_tiles = 0usize;
    let mut raw = Vec::with_capacity(batch);
    for (s, &bias) in plan.seqs().iter().zip(plan.bias()) {
        let accum_tile = if packed { accum_tiles } else { 0 };
        accum_tiles += s.rows_q.div_ceil(ACCUM_TILE_ROWS);
        raw.push(BwdSeqInfoRaw {
            q_start: to_i32(s.q_start, "query start")?,
            k_start: to_i32(s.k_start, "key start")?,
            len_q: to_i32(s.len_q, "query length")?,
            len_k: to_i32(s.len_k, "key length")?,
            rows_q: to_i32(s.rows_q, "query rows")?,
            rows_k: to_i32(s.rows_k, "key rows")?,
            bias,
            accum_tile: to_i32(accum_tile, "dQ workspace tile")?,
        });
    }
    let max_rows_q = plan.seqs().iter().map(|s| s.rows_q).max().unwrap_or(0);
    let max_rows_k = plan.seqs().iter().map(|s| s.rows_k).max().unwrap_or(0);
    let key_blocks = max_rows_k.div_ceil(tiles.key_block);
    let q_blocks = max_rows_q.div_ceil(tiles.query_block);
    let convert_blocks = max_rows_q.div_ceil(ACCUM_TILE_ROWS);
    if key_blocks > i32::MAX as usize || convert_blocks > i32::MAX as usize {
        return Err(unsupported("a sequence dimension this long"));
    }
    let uniform = raw.first().copied().unwrap_or_default();
    let is_uniform = raw.iter().all(|r| r.to_bytes() == uniform.to_bytes());
    let seq_table = (!is_uniform).then(|| raw.iter().flat_map(|r| r.to_bytes()).collect());

    let total_tiles = if packed {
        accum_tiles
    } else {
        batch * accum_tiles_batch
    };
    let accum_elems = total_tiles
        .checked_mul(ACCUM_TILE_ROWS * heads * d)
        .ok_or_else(|| unsupported("a dQ workspace this large"))?;
    let partial_elems = batch * kv_heads * key_blocks;
    let bstride = |s: &Strides| if packed { 0 } else { s.batch as i64 };
    let params = BwdParams {
        dq_stride_batch: bstride(&st.q),
        dq_stride_seq: st.q.seq as i64,
        dq_stride_head: st.q.head as i64,
        dk_stride_batch: bstride(&st.k),
        dk_stride_seq: st.k.seq as i64,
        dk_stride_head: st.k.head as i64,
        dv_stride_batch: bstride(&st.v),
        dv_stride_seq: st.v.seq as i64,
        dv_stride_head: st.v.head as i64,
        accum_tiles_batch: if packed { 0 } else { accum_tiles_batch as i64 },
        batch: batch as i32,
        heads: heads as i32,
        kv_heads: kv_heads as i32,
        kv_group: (heads / kv_heads) as i32,
        causal: plan.causal() as i32,
        scale: plan.scale(),
        key_blocks: key_blocks as i32,
        map_batch: if packed { 0 } else { 1 },
        uniform,
        ..BwdParams::default()
    };
    let o_map = MapShape {
        seq_extent: plan.seq_q(),
        heads,
        batch_extent: fwd.q_map.batch_extent,
        strides: st.o,
    };
    Ok(BackwardLaunch {
        variant: Variant {
            kernel: Kernel::Backward,
            ..fwd.variant
        },
        tiles,
        dkdv_grid: (key_blocks as u32, kv_heads as u32, batch as u32),
        dq_grid: (q_blocks as u32, heads as u32, batch as u32),
        convert_grid: (convert_blocks as u32, heads as u32, batch as u32),
        params,
        seq_table,
        accum_elems,
        partial_elems,
        q_map: fwd.q_map,
        k_map: fwd.k_map,
        v_map: fwd.v_map,
        o_map,
    })
}

/// Encodes a rank-4 tiled tensor map (D, seq, heads, batch) with 128-byte swizzle and a box of
/// 64 columns x `box_rows` rows. Fails with `Unsupported` where TMA cannot describe the tensor.
pub(crate) fn encode_map(
    ptr: u64,
    dtype: DType,
    head_dim: usize,
    m: &MapShape,
    box_rows: usize,
) -> Result<TensorMap> {
    if ptr % 16 != 0 {
        return Err(unsupported(format!(
            "a tensor at address {ptr:#x} (TMA needs 16-byte alignment)"
        )));
    }
    let es = dtype.size_bytes() as u64;
    let (seq, head) = (m.strides.seq as u64 * es, m.strides.head as u64 * es);
    // With one batch entry the stride is never walked, but it must still be a legal value.
    let batch = if m.batch_extent == 1 {
        let span = (seq * m.seq_extent as u64)
            .max(head * m.heads as u64)
            .max(16);
        span.div_ceil(16) * 16
    } else {
        m.strides.batch as u64 * es
    };
    let dims: [u64; 4] = [
        head_dim as u64,
        m.seq_extent.max(1) as u64,
        m.heads as u64,
        m.batch_extent as u64,
    ];
    let strides: [u64; 3] = [seq, head, batch];
    let boxes: [u32; 4] = [64, box_rows as u32, 1, 1];
    let elem: [u32; 4] = [1, 1, 1, 1];
    let data_type = match dtype {
        DType::BF16 => sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
        _ => sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
    };
    let mut out = MaybeUninit::<sys::CUtensorMap>::zeroed();
    // SAFETY: every array has the length the rank (4) asks for; `out` is writable and aligned.
    let rc = unsafe {
        sys::cuTensorMapEncodeTiled(
            out.as_mut_ptr(),
            data_type,
            4,
            ptr as *mut c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxes.as_ptr(),
            elem.as_ptr(),
            sys::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
            sys::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            sys::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    };
    rc.result().map_err(|e| {
        unsupported(format!(
            "a TMA view with dims {dims:?}, byte strides {strides:?} ({e})"
        ))
    })?;
    // SAFETY: the driver initialised the map (zeroed before in any case).
    let map = unsafe { out.assume_init() };
    Ok(TensorMap(map.opaque))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Lengths, Problem};

    #[test]
    fn params_twin_offsets() {
        // Offsets the kernel relies on (params.cuh).
        let p = FwdParams::default();
        let base = &p as *const _ as usize;
        assert_eq!(&p.batch as *const _ as usize - base, 40);
        assert_eq!(&p.scale as *const _ as usize - base, 56);
        assert_eq!(&p.uniform as *const _ as usize - base, 60);
        assert_eq!(&p.map_batch as *const _ as usize - base, 84);
        assert_eq!(std::mem::align_of::<TensorMap>(), 64);
        assert_eq!(std::mem::size_of::<TensorMap>(), 128);
    }

    #[test]
    fn bwd_params_twin_offsets() {
        // Offsets the kernels rely on (params.cuh).
        let p = BwdParams::default();
        let base = &p as *const _ as usize;
        assert_eq!(&p.dq_stride_batch as *const _ as usize - base, 56);
        assert_eq!(&p.accum_tiles_batch as *const _ as usize - base, 128);
        assert_eq!(&p.batch as *const _ as usize - base, 136);
        assert_eq!(&p.scale as *const _ as usize - base, 156);
        assert_eq!(&p.atomic_dq as *const _ as usize - base, 168);
        assert_eq!(&p.uniform as *const _ as usize - base, 176);
        assert_eq!(&p.uniform.bias as *const _ as usize - base, 176 + 24);
    }

    #[test]
    fn backward_launch_shapes() {
        let plan = Problem::new(2, 300, 8, 128)
            .with_kv_heads(2)
            .with_dtype(DType::BF16)
            .with_lengths(Lengths::padded(&[300, 7]))
            .plan()
            .unwrap();
        let l = describe_backward(&plan).unwrap();
        assert_eq!(l.dkdv_grid, (3, 2, 2));
        assert_eq!(l.dq_grid, (3, 8, 2));
        assert_eq!(l.convert_grid, (5, 8, 2));
        assert_eq!(l.accum_elems, 2 * 5 * 64 * 8 * 128);
        assert_eq!(l.partial_elems, 2 * 2 * 3);
        assert_eq!(l.params.kv_group, 4);
        assert_eq!(l.params.accum_tiles_batch, 5);
        assert_eq!(l.seq_table.as_ref().map(|t| t.len()), Some(64));
        assert_eq!(l.variant.kernel, Kernel::Backward);

        let plan = Problem::packed(&[0, 5, 5, 133], 2, 64)
            .with_dtype(DType::F16)
            .plan()
            .unwrap();
        let l = describe_backward(&plan).unwrap();
        assert_eq!(l.dkdv_grid, (1, 2, 3));
        assert_eq!(l.params.accum_tiles_batch, 0);
        assert_eq!(l.params.dq_stride_batch, 0);
        // Sequences of 5, 0 and 128 tokens: tiles 1 + 0 + 2, starting at 0, 1, 1.
        assert_eq!(l.accum_elems, 3 * 64 * 2 * 64);
        let table = l.seq_table.as_ref().unwrap();
        let tile_of =
            |i: usize| i32::from_le_bytes(table[32 * i + 28..32 * i + 32].try_into().unwrap());
        assert_eq!((tile_of(0), tile_of(1), tile_of(2)), (0, 1, 1));
    }

    #[test]
    fn uniform_and_table() {
        let plan = Problem::new(2, 300, 4, 128)
            .with_dtype(DType::BF16)
            .plan()
            .unwrap();
        let l = describe_forward(&plan).unwrap();
        assert!(l.table_key().is_none());
        assert_eq!(l.grid, (3, 4, 2));
        assert_eq!(l.params.uniform.rows, 300);

        let plan = Problem::new(2, 300, 4, 64)
            .with_dtype(DType::F16)
            .with_lengths(Lengths::padded(&[300, 7]))
            .plan()
            .unwrap();
        let l = describe_forward(&plan).unwrap();
        // Two sequences, then the work order of 2 x 4 x 2 tiles (192-row tiles): one unit per
        // CTA on 132 SMs; on 10, two rounds of slots (the last with empties).
        assert_eq!(l.table(132).0.len(), 48 + 4 * 16);
        assert_eq!(l.table(132).1, 16);
        assert_eq!(l.table(10).1, 20);
    }

    #[test]
    fn work_order_lists_units_heaviest_first() {
        // D = 64: 192 x 128 tiles, 2 query tiles per (head, sequence), tile t = m + 2 (h + 4 b).
        let padded = Problem::new(2, 300, 4, 64)
            .with_dtype(DType::BF16)
            .with_lengths(Lengths::padded(&[300, 7]));
        let l = describe_forward(&padded.clone().plan().unwrap()).unwrap();
        let order = |l: &ForwardLaunch| -> Vec<u32> {
            let p = &l.params;
            let units = work_order(
                &l.seqs,
                p.heads as usize,
                p.m_tiles as usize,
                &l.tiles,
                p.causal != 0,
            );
            let list: Vec<u32> = units.iter().map(|&(_, u)| u).collect();
            // With a CTA for each unit, the table's slots are the list itself.
            assert_eq!(table_order(l, 132), list);
            list
        };
        // Sequence 0: 3 key tiles per query tile (work 4); sequence 1 (7 rows): its first query
        // tile sees 1 key tile (work 2), the second only writes zeros (work 1).
        let mut want: Vec<u32> = (0..8).collect();
        want.extend([8, 10, 12, 14, 9, 11, 13, 15]);
        assert_eq!(order(&l), want);

        // Causal pairs (units of tiles 2u, 2u + 1): sequence 1 is 7 rows long, so its pairs
        // (units 4..8) weigh less than sequence 0's.
        let l = describe_forward(&padded.with_causal(true).plan().unwrap()).unwrap();
        assert_eq!(order(&l), vec![0, 1, 2, 3, 4, 5, 6, 7]);

        // Packed: an empty sequence has no tiles in the order.
        let plan = Problem::packed(&[0, 5, 5, 133], 2, 64)
            .with_dtype(DType::F16)
            .plan()
            .unwrap();
        let l = describe_forward(&plan).unwrap();
        // Sequences of 5, 0 and 128 rows: m_tiles 1, tiles (h, b): t = h + 2 b.
        assert_eq!(order(&l), vec![0, 1, 4, 5]);

        // D = 128 (128-row tiles, 3 per (head, sequence), t = m + 3 (h + 4 b)): sequence 0's
        // tiles see 3 key tiles each, sequence 1's first tile 1, its other two none.
        let plan = Problem::new(2, 300, 4, 128)
            .with_dtype(DType::BF16)
            .with_lengths(Lengths::padded(&[300, 7]))
            .plan()
            .unwrap();
        let l = describe_forward(&plan).unwrap();
        let mut want: Vec<u32> = (0..12).collect();
        want.extend([12, 15, 18, 21, 13, 14, 16, 17, 19, 20, 22, 23]);
        assert_eq!(order(&l), want);
    }

    /// The work order in `l`'s table for `ctas` CTAs (the u32 words after the sequences), as
    /// many slots as the table says.
    fn table_order(l: &ForwardLaunch, ctas: u32) -> Vec<u32> {
        let (table, slots) = l.table(ctas);
        let words: Vec<u32> = table[24 * l.seqs.len()..]
            .chunks(4)
            .map(|w| u32::from_le_bytes(w.try_into().unwrap()))
            .collect();
        assert_eq!(words.len(), slots as usize);
        words
    }

    /// The tiles fwd_sm90.cu's `walk_order` visits on `ctas` CTAs from this plan's table,
    /// written the kernel's way (slot arithmetic, the skip of indices past the last tile, the
    /// rows test of `visit_tile`).
    fn walked_tiles(l: &ForwardLaunch, ctas: u32) -> Vec<usize> {
        let p = &l.params;
        let order = table_order(l, ctas);
        let grid = l.launch_grid(ctas, order.len() as i32).0 as usize;
        let n_tiles = p.m_tiles as usize * p.heads as usize * p.batch as usize;
        let shift = usize::from(p.causal != 0);
        let group = 1 << shift;
        let n_slots = order.len() * group;
        let jump = (grid - 1) * group;
        let mut seen = Vec::new();
        for cta in 0..grid {
            let mut s = cta * group;
            while s < n_slots {
                let t = ((order[s >> shift] as usize) << shift) + (s & (group - 1));
                if t < n_tiles && tile_has_rows(l, t) {
                    seen.push(t);
                }
                s += if (s + 1) & (group - 1) == 0 {
                    1 + jump
                } else {
                    1
                };
            }
        }
        seen.sort_unstable();
        seen
    }

    /// Whether tile t has rows of O (fwd_sm90.cu, tile_coord and visit_tile).
    fn tile_has_rows(l: &ForwardLaunch, t: usize) -> bool {
        let (m_tiles, heads) = (l.params.m_tiles as usize, l.params.heads as usize);
        let m = query_block(t % m_tiles, m_tiles, l.params.causal != 0);
        m * l.tiles.block_m < l.seqs[t / m_tiles / heads].rows as usize
    }

    #[test]
    fn the_kernel_walk_of_a_work_order_visits_every_tile_with_rows_once() {
        let plans = [
            Problem::new(3, 700, 4, 128).with_lengths(Lengths::padded(&[700, 129, 0])),
            Problem::new(3, 700, 4, 64)
                .with_causal(true)
                .with_lengths(Lengths::padded(&[1, 700, 333])),
            Problem::new(2, 900, 8, 128)
                .with_kv_heads(2)
                .with_causal(true)
                .with_lengths(Lengths::padded(&[900, 64])),
            Problem::packed(&[0, 5, 305, 306, 819], 2, 64),
            Problem::packed(&[0, 257, 257, 1257], 3, 128).with_causal(true),
        ];
        for (i, problem) in plans.into_iter().enumerate() {
            let plan = problem.with_dtype(DType::BF16).plan();
            let l = describe_forward(&plan.unwrap_or_else(|e| panic!("plan {i}: {e}"))).unwrap();
            assert!(l.ordered(), "plan {i}");
            let p = &l.params;
            let want: Vec<usize> = (0..p.m_tiles as usize * p.heads as usize * l.seqs.len())
                .filter(|&t| tile_has_rows(&l, t))
                .collect();
            for ctas in [1, 7, 132] {
                assert_eq!(walked_tiles(&l, ctas), want, "plan {i}, {ctas} CTAs");
            }
        }
    }

    #[test]
    fn forward_grid_policy() {
        // D = 128, 3 x 4 x 2 = 24 tiles of 128 rows.
        let even = Problem::new(2, 300, 4, 128).with_dtype(DType::BF16);
        let l = describe_forward(&even.clone().plan().unwrap()).unwrap();
        assert!(l.table_key().is_none());
        assert_eq!(l.launch_grid(132, 0), (24, 1, 1));
        assert_eq!(l.launch_grid(10, 0), (10, 1, 1));
        // Causal: 12 pairs of tiles.
        let causal = even.clone().with_causal(true).plan().unwrap();
        let l = describe_forward(&causal).unwrap();
        assert!(l.table_key().is_none());
        assert_eq!(l.launch_grid(10, 0), (10, 1, 1));
        assert_eq!(l.launch_grid(132, 0), (12, 1, 1));
        assert_eq!(l.entry(), FWD_ENTRY);
        // Padded: a work order on the persistent grid (causal: of pairs), even when every
        // sequence has the same length (the tiles past 200 rows only write zeros).
        let padded = even.clone().with_lengths(Lengths::padded(&[300, 7]));
        // The table's slots are laid out for the grid launch_grid then gives.
        let grid = |l: &ForwardLaunch, sms: u32| l.launch_grid(sms, l.table(sms).1);
        let l = describe_forward(&padded.clone().plan().unwrap()).unwrap();
        assert_eq!((l.entry(), l.table(132).1), (FWD_ORDERED_ENTRY, 24));
        assert_eq!(grid(&l, 10), (10, 1, 1));
        assert_eq!(grid(&l, 132), (24, 1, 1));
        let l = describe_forward(&padded.with_causal(true).plan().unwrap()).unwrap();
        assert_eq!(l.table(132).1, 12);
        assert_eq!(grid(&l, 10), (10, 1, 1));
        assert_eq!(grid(&l, 132), (12, 1, 1));
        let alike = even.with_lengths(Lengths::padded(&[200, 200]));
        let l = describe_forward(&alike.plan().unwrap()).unwrap();
        assert_eq!((l.entry(), l.table(132).1), (FWD_ORDERED_ENTRY, 24));

        // D = 64 (2 x 4 x 2 = 16 tiles of 192 rows): the same.
        let alike = Problem::new(2, 300, 4, 64)
            .with_dtype(DType::BF16)
            .with_lengths(Lengths::padded(&[200, 200]));
        let l = describe_forward(&alike.clone().plan().unwrap()).unwrap();
        assert_eq!(l.table(132).1, 16);
        assert_eq!(grid(&l, 10), (10, 1, 1));
        assert_eq!(grid(&l, 132), (16, 1, 1));
        // The key tells plans apart that differ only in what the order depends on.
        let lc = describe_forward(&alike.with_causal(true).plan().unwrap()).unwrap();
        assert_ne!(l.table_key(), lc.table_key());
        assert_eq!(grid(&lc, 132), (8, 1, 1));
    }

    #[test]
    fn declines_what_the_kernels_lack() {
        for (d, dt) in [(64, DType::F32), (96, DType::BF16), (256, DType::F16)] {
            let plan = Problem::new(1, 10, 1, d).with_dtype(dt).plan().unwrap();
            assert!(matches!(
                describe_forward(&plan),
                Err(Error::Unsupported { .. })
            ));
            assert!(matches!(
                describe_backward(&plan),
                Err(Error::Unsupported { .. })
            ));
        }
    }
}
