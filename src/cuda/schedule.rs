//! Which CTA of the forward's persistent grid computes which units of tiles, for plans whose
//! units differ in work (padding, varlen): the slot list the kernel walks (fwd_sm90.cu,
//! `walk_order`: CTA c takes slots c, c + ctas, c + 2 ctas, ...).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Slots for `ctas` CTAs (fewer when there are fewer units), `units` being (work, unit index)
/// pairs heaviest first; `empty` marks a slot without a unit (an index the kernel skips).
///
/// Each unit, heaviest first, goes to the CTA with the least work so far; then, while a unit of
/// the busiest CTA traded for a lighter unit (or for none) of the idlest one lowers the busiest
/// CTA's work, the best such trade is made. Dealing sorted units out round-robin left the
/// busiest CTA ~5% above the mean on the padded N=4k D=128 plan of the standard workload
/// (1760 units of 26-33 key tiles on 132 CTAs: whole rounds of alike units), and the first
/// pass alone 4.6%; the trades bring it to 0.1% (the work counted in key tiles). Each CTA then
/// walks its units heaviest first, so that in any round the CTAs run alike units, the tiles of
/// one sequence and head about together (their K and V shared in L2).
pub(crate) fn assign(units: &[(u64, u32)], ctas: usize, empty: u32) -> Vec<u32> {
    let g = ctas.min(units.len());
    if g == 0 {
        return Vec::new();
    }
    let mut lists: Vec<Vec<(u64, u32)>> = vec![Vec::new(); g];
    let mut loads = vec![0u64; g];
    let mut idlest: BinaryHeap<Reverse<(u64, usize)>> = (0..g).map(|c| Reverse((0, c))).collect();
    for &(w, u) in units {
        let Reverse((load, c)) = idlest.pop().expect("g > 0 CTAs");
        lists[c].push((w, u));
        loads[c] = load + w;
        idlest.push(Reverse((loads[c], c)));
    }
    // Each trade lowers the busiest CTA's work or leaves it tied with another CTA at a lower
    // total imbalance; the bound keeps a pathological plan from spending long here (the
    // result is cached per plan shape).
    for _ in 0..4 * g {
        let busiest = (0..g)
            .max_by_key(|&c| (loads[c], Reverse(c)))
            .expect("g > 0");
        let idle = (0..g).min_by_key(|&c| (loads[c], c)).expect("g > 0");
        let Some((x, y)) = best_trade(&lists[busiest], &lists[idle], loads[busiest] - loads[idle])
        else {
            break;
        };
        let unit = lists[busiest].remove(x);
        loads[busiest] -= unit.0;
        loads[idle] += unit.0;
        if let Some(y) = y {
            let back = lists[idle].remove(y);
            loads[idle] -= back.0;
            loads[busiest] += back.0;
            lists[busiest].push(back);
        }
        lists[idle].push(unit);
    }
    for l in &mut lists {
        l.sort_unstable_by_key(|&(w, u)| (Reverse(w), u));
    }
    let rounds = lists.iter().map(Vec::len).max().unwrap_or(0);
    (0..rounds)
        .flat_map(|k| {
            lists
                .iter()
                .map(move |l| l.get(k).map_or(empty, |&(_, u)| u))
        })
        .collect()
}

/// The trade between a busy CTA's units and an idle CTA's whose work difference `x - y` is in
/// (0, gap) and closest to gap / 2 (the pair's larger total then drops the most): positions
/// (in `busy`, in `idle` or none for a plain move). One candidate per distinct work value, so
/// that long lists (varlen plans of many sequences) stay cheap: O(n log n) in the list length.
fn best_trade(
    busy: &[(u64, u32)],
    idle: &[(u64, u32)],
    gap: u64,
) -> Option<(usize, Option<usize>)> {
    // (work, first position) per distinct work value, by work.
    let distinct = |l: &[(u64, u32)]| -> Vec<(u64, usize)> {
        let mut v: Vec<(u64, usize)> = l.iter().enumerate().map(|(i, &(w, _))| (w, i)).collect();
        v.sort_unstable();
        v.dedup_by_key(|p| p.0);
        v
    };
    let ys: Vec<(u64, Option<usize>)> = std::iter::once((0, None))
        .chain(distinct(idle).into_iter().map(|(w, i)| (w, Some(i))))
        .collect();
    let mut best: Option<(u64, usize, Option<usize>)> = None;
    for (x, xi) in distinct(busy) {
        // The y nearest x - gap / 2 from either side.
        let at = ys.partition_point(|&(y, _)| y + gap / 2 < x);
        for &(y, yi) in ys[at.saturating_sub(1)..(at + 1).min(ys.len())].iter() {
            if y >= x || x - y >= gap {
                continue;
            }
            let d = x - y;
            let worse = d.max(gap - d);
            if best.is_none_or(|(b, _, _)| worse < b) {
                best = Some((worse, xi, yi));
            }
        }
    }
    best.map(|(_, x, y)| (x, y))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (work, unit) pairs heaviest first for sequences of `tiles` key tiles each, one unit per
    /// (query tile, head) as the forward counts them (key tiles + 1).
    fn padded_units(key_tiles: &[u64], heads: u64) -> Vec<(u64, u32)> {
        let mut units: Vec<(u64, u32)> = key_tiles
            .iter()
            .flat_map(|&k| std::iter::repeat_n(k + 1, (k * heads) as usize))
            .enumerate()
            .map(|(i, w)| (w, i as u32))
            .collect();
        units.sort_unstable_by_key(|&(w, u)| (Reverse(w), u));
        units
    }

    /// Work of each CTA under `slots` (CTA c: slots c, c + ctas, ...).
    fn loads(slots: &[u32], units: &[(u64, u32)], ctas: usize, empty: u32) -> Vec<u64> {
        let mut work = vec![0u64; units.len()];
        for &(w, u) in units {
            work[u as usize] = w;
        }
        let mut l = vec![0; ctas];
        for (s, &u) in slots.iter().enumerate() {
            if u != empty {
                l[s % ctas] += work[u as usize];
            }
        }
        l
    }

    #[test]
    fn every_unit_once_and_the_busiest_cta_near_the_mean() {
        // The standard workload's padded D=128 N=4k plan: lengths 3389/4010/3177/3252 are
        // 27/32/25/26 tiles of 128, 16 heads.
        let units = padded_units(&[27, 32, 25, 26], 16);
        let empty = units.len() as u32;
        let slots = assign(&units, 132, empty);
        assert_eq!(slots.len() % 132, 0);
        let mut seen: Vec<u32> = slots.iter().copied().filter(|&u| u != empty).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..units.len() as u32).collect::<Vec<_>>());

        let l = loads(&slots, &units, 132, empty);
        let total: u64 = units.iter().map(|p| p.0).sum();
        let busiest = *l.iter().max().unwrap();
        // Round-robin over the sorted units (the fixed stride alone) for comparison.
        let mut rr = vec![0u64; 132];
        for (i, p) in units.iter().enumerate() {
            rr[i % 132] += p.0;
        }
        let mean = total as f64 / 132.0;
        assert!(*rr.iter().max().unwrap() as f64 > 1.04 * mean);
        assert!(
            (busiest as f64) < 1.01 * mean,
            "busiest {busiest}, mean {mean}"
        );
        // Each CTA walks its units heaviest first.
        for c in 0..132 {
            let w: Vec<u64> = slots[c..]
                .iter()
                .step_by(132)
                .filter(|&&u| u != empty)
                .map(|&u| units[units.iter().position(|p| p.1 == u).unwrap()].0)
                .collect();
            assert!(w.windows(2).all(|p| p[0] >= p[1]), "CTA {c}: {w:?}");
        }
    }

    #[test]
    fn fewer_units_than_ctas_one_each() {
        let units = vec![(5, 2), (3, 0), (1, 1)];
        assert_eq!(assign(&units, 132, 9), vec![2, 0, 1]);
        assert!(assign(&[], 132, 0).is_empty());
    }

    #[test]
    fn a_trade_evens_what_the_first_pass_leaves() {
        // Heaviest first to the idlest CTA: 3 | 3, then 2 | 2, then 2 on CTA 0: 7 against 5.
        // Trading a 3 of CTA 0 for a 2 of CTA 1 gives 6 and 6.
        let units = vec![(3, 0), (3, 1), (2, 2), (2, 3), (2, 4)];
        let slots = assign(&units, 2, 99);
        assert_eq!(loads(&slots, &units, 2, 99), vec![6, 6]);
    }

    #[test]
    fn many_units_of_many_weights_stay_cheap() {
        // A varlen plan of 500 sequences of 1..=64 tiles (of 128 rows, up to 8k tokens), 16
        // heads: 260 k units of 64 work values.
        let mut units: Vec<(u64, u32)> = (0..500u64)
            .flat_map(|s| {
                let tiles = 1 + (s * 7919) % 64;
                std::iter::repeat_n(tiles + 1, (tiles * 16) as usize)
            })
            .enumerate()
            .map(|(i, w)| (w, i as u32))
            .collect();
        units.sort_unstable_by_key(|&(w, u)| (Reverse(w), u));
        let t = std::time::Instant::now();
        let slots = assign(&units, 132, u32::MAX);
        // Generous for a debug build on a slow machine; release takes milliseconds.
        assert!(t.elapsed().as_secs_f64() < 10.0, "{:?}", t.elapsed());
        assert_eq!(
            slots.iter().filter(|&&u| u != u32::MAX).count(),
            units.len()
        );
        let l = loads(&slots, &units, 132, u32::MAX);
        let mean = units.iter().map(|p| p.0).sum::<u64>() as f64 / 132.0;
        assert!((*l.iter().max().unwrap() as f64) < 1.001 * mean);
    }
}
