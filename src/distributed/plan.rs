//! How the arena is cut into shards: pure geometry, no communication.
//!
//! Coordinates: the *padded* index lays the tensors end to end in the parameter set's order,
//! each rounded up to [`TENSOR_ALIGN`] elements as in the arena; the *flat* index lays them end
//! to end without padding (what travels between ranks). Shard boundaries are multiples of
//! [`SHARD_ALIGN`] in the padded index, so a shard that cuts a tensor cuts it at a multiple of
//! 64 elements (256 bytes) of that tensor, and the norm's granules (the same
//! [`SHARD_ALIGN`]-element runs) never straddle two shards.

use crate::arena::TENSOR_ALIGN;
use crate::error::{Error, Result};
use std::ops::Range;

/// Shards begin and end on multiples of this many elements (4 KiB of f32) of the padded arena
/// (tensors laid end to end, each rounded up to 64 elements). It is also the granule of the
/// distributed gradient norm: one partial sum per granule, the same whatever the number of
/// ranks.
///
/// ```
/// assert_eq!(wgpu_optim::distributed::SHARD_ALIGN, 1024);
/// ```
pub const SHARD_ALIGN: usize = 1024;

/// One contiguous run of one tensor inside a shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardPiece {
    /// The tensor's name.
    pub tensor: String,
    /// Its index in the parameter set's order.
    pub index: usize,
    /// The run of the tensor's elements this shard owns.
    pub range: Range<usize>,
}

/// The cut of a parameter set into contiguous, byte-balanced shards, one per rank.
///
/// ```
/// use wgpu_optim::distributed::ShardPlan;
/// let plan = ShardPlan::new(&[("w", 5000), ("b", 10)], 2)?;
/// // 5000 + 10 elements, padded to 5056 + 64, cut on 1024-element granules: 2 and 3 of them.
/// assert_eq!(plan.flat_range(0)?, 0..2048);
/// assert_eq!(plan.flat_range(1)?, 2048..5010);
/// assert_eq!(plan.pieces(1)?[0].range, 2048..5000);
/// assert!(plan.flat_range(2).is_err()); // there is no third rank
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct ShardPlan {
    tensors: Vec<(String, usize)>,
    /// Padded start of each tensor, and the total at the end.
    padded: Vec<usize>,
    /// Flat start of each tensor, and the total at the end.
    flat: Vec<usize>,
    /// Padded boundary of each shard (`ranks + 1` entries).
    bounds: Vec<usize>,
}

impl ShardPlan {
    /// Cut `tensors` (name, elements, in the parameter set's order) into `ranks` shards of
    /// whole [`SHARD_ALIGN`]-element granules whose sizes differ by at most one granule. With
    /// more ranks than granules, some ranks own nothing.
    ///
    /// Errors: [`Error::InvalidOptions`] for zero ranks, [`Error::Empty`] for no tensors or an
    /// empty one, [`Error::DeviceLimit`] when the padded tensors do not fit the address space.
    /// Any plan that fits is cut exactly, however many ranks it has.
    pub fn new(tensors: &[(&str, usize)], ranks: usize) -> Result<ShardPlan> {
        if ranks == 0 {
            return Err(Error::InvalidOptions(
                "a shard plan needs at least one rank".into(),
            ));
        }
        if tensors.is_empty() {
            return Err(Error::Empty("no tensors given".into()));
        }
        let mut padded = Vec::with_capacity(tensors.len() + 1);
        let mut flat = Vec::with_capacity(tensors.len() + 1);
        let (mut p, mut f) = (0usize, 0usize);
        for &(name, len) in tensors {
            if len == 0 {
                return Err(Error::Empty(format!("tensor `{name}` has no elements")));
            }
            padded.push(p);
            flat.push(f);
            let next = len
                .checked_next_multiple_of(TENSOR_ALIGN)
                .and_then(|n| p.checked_add(n));
            p = next.ok_or_else(|| {
                Error::DeviceLimit("the tensors do not fit the address space".into())
            })?;
            f += len;
        }
        padded.push(p);
        flat.push(f);
        // In u128: `r * granules` and the last granule's end may pass usize::MAX; the bounds
        // themselves are at most `p`.
        let granules = p.div_ceil(SHARD_ALIGN) as u128;
        let bounds = (0..=ranks as u128)
            .map(|r| ((r * granules / ranks as u128) * SHARD_ALIGN as u128).min(p as u128) as usize)
            .collect();
        Ok(ShardPlan {
            tensors: tensors.iter().map(|&(n, l)| (n.to_string(), l)).collect(),
            padded,
            flat,
            bounds,
        })
    }

    /// Number of shards (ranks).
    pub fn ranks(&self) -> usize {
        self.bounds.len() - 1
    }

    /// The tensors (name, elements) in order.
    pub fn tensors(&self) -> &[(String, usize)] {
        &self.tensors
    }

    /// Total elements of all tensors (without padding).
    pub fn total_len(&self) -> usize {
        *self.flat.last().expect("at least one tensor")
    }

    /// The flat index of padded position `at` (a shard boundary).
    fn flat_of(&self, at: usize) -> usize {
        // The last tensor starting at or before `at`.
        let t = self.padded.partition_point(|&s| s <= at).saturating_sub(1);
        if t >= self.tensors.len() {
            return self.total_len();
        }
        self.flat[t] + (at - self.padded[t]).min(self.tensors[t].1)
    }

    /// [`Error::InvalidOptions`] unless `rank` is one of the plan's ranks.
    fn check_rank(&self, rank: usize) -> Result<()> {
        if rank < self.ranks() {
            Ok(())
        } else {
            Err(Error::InvalidOptions(format!(
                "rank {rank} is not in a shard plan of {} ranks",
                self.ranks()
            )))
        }
    }

    /// The run of the flat index (tensors end to end, no padding) shard `rank` owns.
    ///
    /// Errors: [`Error::InvalidOptions`] when `rank` is not below [`ShardPlan::ranks`].
    pub fn flat_range(&self, rank: usize) -> Result<Range<usize>> {
        self.check_rank(rank)?;
        Ok(self.shard_range(rank))
    }

    /// [`ShardPlan::flat_range`] of a rank known to be in the plan.
    pub(crate) fn shard_range(&self, rank: usize) -> Range<usize> {
        self.flat_of(self.bounds[rank])..self.flat_of(self.bounds[rank + 1])
    }

    /// The tensor runs shard `rank` owns, in order.
    ///
    /// Errors: [`Error::InvalidOptions`] when `rank` is not below [`ShardPlan::ranks`].
    pub fn pieces(&self, rank: usize) -> Result<Vec<ShardPiece>> {
        self.check_rank(rank)?;
        Ok(self.shard_pieces(rank))
    }

    /// [`ShardPlan::pieces`] of a rank known to be in the plan.
    pub(crate) fn shard_pieces(&self, rank: usize) -> Vec<ShardPiece> {
        let (lo, hi) = (self.bounds[rank], self.bounds[rank + 1]);
        let mut out = Vec::new();
        for (i, (name, len)) in self.tensors.iter().enumerate() {
            let start = self.padded[i];
            let a = lo.saturating_sub(start).min(*len);
            let b = hi.saturating_sub(start).min(*len);
            if a < b {
                out.push(ShardPiece {
                    tensor: name.clone(),
                    index: i,
                    range: a..b,
                });
            }
        }
        out
    }

    /// The norm granules of shard `rank`: for each, the run of the shard's own elements
    /// (offsets into its flat range) that the granule covers, in order. Every granule of the
    /// shard is listed, also one that holds only padding (an empty run).
    pub(crate) fn granules(&self, rank: usize) -> Vec<Range<usize>> {
        let (lo, hi) = (self.bounds[rank], self.bounds[rank + 1]);
        let base = self.flat_of(lo);
        (lo..hi)
            .step_by(SHARD_ALIGN)
            .map(|g| {
                let end = (g + SHARD_ALIGN).min(hi);
                self.flat_of(g) - base..self.flat_of(end) - base
            })
            .collect()
    }

    /// Granules of every shard, in rank order (for the norm's all-gather).
    pub(crate) fn granule_counts(&self) -> Vec<usize> {
        (0..self.ranks())
            .map(|r| (self.bounds[r + 1] - self.bounds[r]).div_ceil(SHARD_ALIGN))
            .collect()
    }

    /// The name a shard's run of a tensor has in the rank's own parameter set: the tensor's
    /// name when the shard holds all of it, else `name[start..end]`.
    pub(crate) fn piece_name(&self, piece: &ShardPiece) -> String {
        if piece.range == (0..self.tensors[piece.index].1) {
            piece.tensor.clone()
        } else {
            format!(
                "{}[{}..{}]",
                piece.tensor, piece.range.start, piece.range.end
            )
        }
    }

    /// The flat start of tensor `index`.
    pub(crate) fn flat_start(&self, index: usize) -> usize {
        self.flat[index]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(tensors: &[(&str, usize)], ranks: usize) -> ShardPlan {
        let plan = ShardPlan::new(tensors, ranks).unwrap();
        let total: usize = tensors.iter().map(|t| t.1).sum();
        // The shards tile the flat index in order, and their pieces are exactly their runs.
        let mut at = 0;
        for r in 0..ranks {
            let f = plan.flat_range(r).unwrap();
            assert_eq!(f.start, at);
            at = f.end;
            let pieces = plan.pieces(r).unwrap();
            let piece_total: usize = pieces.iter().map(|p| p.range.len()).sum();
            assert_eq!(piece_total, f.len());
            for p in &pieces {
                // Cuts inside a tensor fall on 64-element (256-byte) boundaries of it.
                assert_eq!(p.range.start % TENSOR_ALIGN, 0);
                assert_eq!(
                    plan.flat_start(p.index) + p.range.start - f.start,
                    pieces
                        .iter()
                        .take_while(|q| q.index != p.index)
                        .map(|q| q.range.len())
                        .sum::<usize>()
                );
            }
            let g: usize = plan.granules(r).iter().map(|g| g.len()).sum();
            assert_eq!(g, f.len());
        }
        assert_eq!(at, total);
        // Balanced: shard sizes in granules differ by at most one.
        let counts = plan.granule_counts();
        let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(hi - lo <= 1, "{counts:?}");
        plan
    }

    #[test]
    fn shards_tile_the_arena_balanced_and_aligned() {
        for ranks in 1..=5 {
            check(
                &[("a", 3), ("b", 64), ("c", 5000), ("d", 1), ("e", 9999)],
                ranks,
            );
            check(&[("w", 1)], ranks);
            check(&[("w", 4097), ("v", 4096)], ranks);
        }
        let many: Vec<(String, usize)> = (0..300).map(|i| (format!("t{i}"), 1 + i % 7)).collect();
        let specs: Vec<(&str, usize)> = many.iter().map(|(n, l)| (n.as_str(), *l)).collect();
        for ranks in 1..=4 {
            check(&specs, ranks);
        }
    }

    #[test]
    fn more_ranks_than_granules_leaves_ranks_empty() {
        let plan = check(&[("w", 100)], 3);
        assert_eq!(plan.flat_range(0).unwrap(), 0..0);
        assert_eq!(plan.flat_range(2).unwrap(), 0..100);
        assert!(plan.pieces(0).unwrap().is_empty());
    }

    #[test]
    fn cut_tensors_get_range_names() {
        let plan = check(&[("w", 3000)], 2);
        let p = plan.pieces(1).unwrap();
        assert_eq!(p[0].range, 1024..3000);
        assert_eq!(plan.piece_name(&p[0]), "w[1024..3000]");
        let whole = check(&[("w", 30)], 1);
        assert_eq!(whole.piece_name(&whole.pieces(0).unwrap()[0]), "w");
    }

    #[test]
    fn bad_plans_are_errors() {
        assert!(matches!(
            ShardPlan::new(&[("w", 3)], 0),
            Err(Error::InvalidOptions(_))
        ));
        assert!(matches!(ShardPlan::new(&[], 2), Err(Error::Empty(_))));
        assert!(matches!(
            ShardPlan::new(&[("w", 0)], 2),
            Err(Error::Empty(_))
        ));
        assert!(matches!(
            ShardPlan::new(&[("w", usize::MAX - 10)], 2),
            Err(Error::DeviceLimit(_))
        ));
    }

    #[test]
    fn ranks_outside_the_plan_are_errors() {
        let plan = check(&[("w", 3000), ("b", 7)], 2);
        for r in [2, 3, usize::MAX] {
            match plan.flat_range(r) {
                Err(Error::InvalidOptions(msg)) => {
                    assert!(msg.contains(&format!("rank {r} ")), "{msg}")
                }
                other => panic!("flat_range({r}): {other:?}"),
            }
            assert!(matches!(plan.pieces(r), Err(Error::InvalidOptions(_))));
        }
        // The plan is unchanged and still answers for its own ranks.
        assert_eq!(plan.ranks(), 2);
        assert_eq!(plan.flat_range(1).unwrap(), 1024..3007);
    }

    #[test]
    fn huge_tensors_over_many_ranks_are_cut_exactly() {
        // `rank * granules` passes usize::MAX here (2^50 granules times up to 2^14 ranks).
        let (len, ranks) = (1usize << 60, 1usize << 14);
        let plan = ShardPlan::new(&[("w", len)], ranks).unwrap();
        let share = len / ranks;
        for r in [0, 1, ranks / 2, ranks - 1] {
            assert_eq!(plan.flat_range(r).unwrap(), r * share..(r + 1) * share);
        }
        assert_eq!(plan.pieces(ranks - 1).unwrap()[0].range.end, len);
        // Padded end at the very top of the address space: the last granule ends past it.
        let top = usize::MAX - 63;
        let plan = ShardPlan::new(&[("w", top)], 3).unwrap();
        assert_eq!(plan.flat_range(2).unwrap().end, top);
        let tiled: usize = (0..3).map(|r| plan.flat_range(r).unwrap().len()).sum();
        assert_eq!(tiled, top);
    }
}
