//! The few collectives the sharded optimizer needs, over MPI: an agreement round (status,
//! hashes and error text of every rank, so that a failure or a mismatch is an error on every
//! rank instead of a hang), and the exchanges of f32 bits and f64 partials. Floats travel as
//! their bits (`u32`, `u64`): MPI only copies them; every sum is ours, in rank order.

use crate::error::{Error, Result};
use mpi::collective::CommunicatorCollectives;
use mpi::datatype::{Partition, PartitionMut};
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::Count;

/// Bytes of error text each rank sends in an agreement round.
const MSG: usize = 240;
/// Hashes compared in one agreement round.
pub(crate) const HASHES: usize = 2;
const WORD: usize = 8 + 8 * HASHES + MSG;

/// 64-bit FNV-1a: a fixed, portable hash of what the ranks must agree on.
#[derive(Clone, Copy)]
pub(crate) struct Fnv(u64);

impl Fnv {
    pub fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    pub fn bytes(mut self, data: &[u8]) -> Fnv {
        for &b in data {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
        self
    }

    pub fn str(self, s: &str) -> Fnv {
        self.u64(s.len() as u64).bytes(s.as_bytes())
    }

    pub fn u64(self, v: u64) -> Fnv {
        self.bytes(&v.to_le_bytes())
    }

    pub fn finish(self) -> u64 {
        self.0
    }
}

/// One agreement round: every rank sends whether its local part succeeded (with the error text
/// when not) and `hashes`; every rank then returns the same verdict. The rank that failed
/// returns its own error, every other rank [`Error::RankFailed`] naming the first one that
/// failed; with no failure, a hash that differs from rank 0's is an [`Error::RankMismatch`]
/// (named by `what`) on every rank.
pub(crate) fn agree(
    comm: &SimpleCommunicator,
    local: Result<()>,
    hashes: [u64; HASHES],
    what: [&str; HASHES],
) -> Result<()> {
    let n = comm.size() as usize;
    let mut mine = [0u8; WORD];
    if let Err(e) = &local {
        mine[0] = 1;
        let text = e.to_string();
        // Cut on a character boundary so the text stays valid UTF-8.
        let mut end = text.len().min(MSG);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        mine[8 + 8 * HASHES..8 + 8 * HASHES + end].copy_from_slice(&text.as_bytes()[..end]);
    }
    for (k, h) in hashes.iter().enumerate() {
        mine[8 + 8 * k..16 + 8 * k].copy_from_slice(&h.to_le_bytes());
    }
    let mut all = vec![0u8; WORD * n];
    comm.all_gather_into(&mine[..], &mut all[..]);
    local?;
    let word = |r: usize| &all[r * WORD..(r + 1) * WORD];
    if let Some(r) = (0..n).find(|&r| word(r)[0] != 0) {
        let text = &word(r)[8 + 8 * HASHES..];
        let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
        return Err(Error::RankFailed {
            rank: r,
            reason: String::from_utf8_lossy(&text[..end]).into_owned(),
        });
    }
    for (k, what) in what.iter().enumerate() {
        let h = |r: usize| &word(r)[8 + 8 * k..16 + 8 * k];
        if let Some(r) = (1..n).find(|&r| h(r) != h(0)) {
            return Err(Error::RankMismatch {
                what: what.to_string(),
                rank: r,
            });
        }
    }
    Ok(())
}

/// Element counts and displacements of a partition, as MPI takes them; `Err` past MPI's `int`.
pub(crate) fn partition(counts: &[usize]) -> Result<(Vec<Count>, Vec<Count>)> {
    let too_big = || {
        Error::DeviceLimit(format!(
            "a rank's share of {} elements exceeds what one MPI message can count ({})",
            counts.iter().sum::<usize>(),
            Count::MAX
        ))
    };
    let mut c = Vec::with_capacity(counts.len());
    let mut d = Vec::with_capacity(counts.len());
    let mut at = 0usize;
    for &n in counts {
        c.push(Count::try_from(n).map_err(|_| too_big())?);
        d.push(Count::try_from(at).map_err(|_| too_big())?);
        at += n;
    }
    Ok((c, d))
}

/// Reduce-scatter's exchange: `send` is this rank's whole flat gradient (bits); rank `r`
/// receives, from every rank in rank order, that rank's run `counts[r]` at `displs[r]`.
/// `recv` gets `size * counts[me]` values: rank 0's run, then rank 1's, ...
pub(crate) fn scatter_runs(
    comm: &SimpleCommunicator,
    send: &[u32],
    (counts, displs): (&[Count], &[Count]),
    recv: &mut [u32],
) {
    let n = counts.len();
    let me = comm.rank() as usize;
    let c = counts[me];
    let rcounts = vec![c; n];
    let rdispls: Vec<Count> = (0..n as Count).map(|r| r * c).collect();
    let send = Partition::new(send, counts, displs);
    let mut recv = PartitionMut::new(recv, &rcounts[..], &rdispls[..]);
    comm.all_to_all_varcount_into(&send, &mut recv);
}

/// All-gather of every rank's run (`counts[r]` values at `displs[r]`) into `out` on every rank.
pub(crate) fn gather_runs<T: mpi::datatype::Equivalence>(
    comm: &SimpleCommunicator,
    mine: &[T],
    (counts, displs): (&[Count], &[Count]),
    out: &mut [T],
) {
    let mut recv = PartitionMut::new(out, counts, displs);
    comm.all_gather_varcount_into(mine, &mut recv);
}
