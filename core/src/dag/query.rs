//! The indexed queries. See `docs/DAG_INDEX.md` for why each one is correct.
//!
//! Notation: `H(P)` is the history of position `P`; `(c, s)` is the node at sequence `s` of
//! chain `c`; the part of chain `c` inside `H(P)` is the prefix `1..=clock(P)[c]`.

use super::store::{ChainId, Clock, DagStore, NodeId, Seq};
use super::{Dag, DagError, ForkPosition, MetaFilter};
use crate::entry::{Entry, Position};
use crate::hash::EntryHash;

/// An optional extra test on candidate entries of a cover search.
pub type EntryPredicate<'p> = &'p mut dyn FnMut(&EntryHash, &Entry) -> bool;

impl<S: DagStore> Dag<S> {
    /// The smallest subset of `position` with the same history: its members that are in the
    /// history of no other member.
    pub fn minimal_cover(&self, position: &Position) -> Result<Position, DagError> {
        let ids = self.resolve(position)?;
        let maximal = self.maximal(ids)?;
        self.hashes(maximal)
    }

    /// The members of `ids` in no other member's history (deduplicated).
    pub(super) fn maximal(&self, mut ids: Vec<NodeId>) -> Result<Vec<NodeId>, DagError> {
        ids.sort_unstable();
        ids.dedup();
        let mut keep = Vec::with_capacity(ids.len());
        for &x in &ids {
            if !self.is_dominated(x, &ids)? {
                keep.push(x);
            }
        }
        Ok(keep)
    }

    /// The first member of `ids` that is in the history of another member, if any.
    pub(super) fn first_dominated(&self, ids: &[NodeId]) -> Result<Option<NodeId>, DagError> {
        for &x in ids {
            if self.is_dominated(x, ids)? {
                return Ok(Some(x));
            }
        }
        Ok(None)
    }

    /// Whether `x` is in the history of a member of `ids` other than itself.
    fn is_dominated(&self, x: NodeId, ids: &[NodeId]) -> Result<bool, DagError> {
        let nx = self.store.node(x)?;
        for &y in ids {
            if y != x && self.store.node(y)?.clock.covers(nx.chain, nx.seq) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The maximal nodes of the history whose clock is `clock`: one head per chain, reduced.
    fn heads(&self, clock: &Clock) -> Result<Vec<NodeId>, DagError> {
        let mut heads = Vec::new();
        for c in 0..clock.width() {
            let s = clock.get(c);
            if s > 0 {
                heads.push(self.store.chain_member(c, s)?);
            }
        }
        self.maximal(heads)
    }

    /// Greatest lower bound of positions: the minimal cover of the intersection of their
    /// histories. The meet of no positions is empty.
    pub fn meet(&self, positions: &[Position]) -> Result<Position, DagError> {
        let mut clocks = positions.iter().map(|p| self.position_clock(&self.resolve(p)?));
        let Some(first) = clocks.next() else {
            return Ok(Position::new());
        };
        let mut acc = first?;
        for clock in clocks {
            acc = acc.meet(&clock?);
        }
        let heads = self.heads(&acc)?;
        self.hashes(heads)
    }

    /// The fork position of `a` and `b` (DAG spec §5.3).
    ///
    /// `I = H(a) ∩ H(b)` has clock `min(clock(a), clock(b))`, so the common frontier is the
    /// reduced set of I's chain heads. The entries only in `H(a)` are, per chain `c`, the
    /// segment `vi[c]+1 ..= va[c]`. Of a segment, the first node may have a predecessor in I;
    /// a later node can only have one where `g(s) = Σ_c' min(clock(c,s)[c'], vi[c'])` grows
    /// (because `prev` is a minimal cover), and `g` never decreases along a chain, so those
    /// nodes are found by bisection instead of by walking the segment.
    pub fn fork_position(&self, a: &Position, b: &Position) -> Result<ForkPosition, DagError> {
        let va = self.position_clock(&self.resolve(a)?)?;
        let vb = self.position_clock(&self.resolve(b)?)?;
        let vi = va.meet(&vb);
        let mut result = ForkPosition { common_frontier: self.hashes(self.heads(&vi)?)?, ..Default::default() };
        let mut common = Vec::new();
        for (side, fork) in [(&va, &mut result.fork_a), (&vb, &mut result.fork_b)] {
            let mut found = Vec::new();
            for c in 0..side.width() {
                let (lo, hi) = (vi.get(c) + 1, side.get(c));
                if lo > hi {
                    continue;
                }
                let mut candidates = vec![lo];
                if hi > lo {
                    let (g_lo, g_hi) = (self.growth(c, lo, &vi)?, self.growth(c, hi, &vi)?);
                    self.bisect_growth(c, (lo, g_lo), (hi, g_hi), &vi, &mut candidates)?;
                }
                for s in candidates {
                    let v = self.store.chain_member(c, s)?;
                    let node = self.store.node(v)?;
                    if node.preds.is_empty() {
                        found.push(v);
                    }
                    for &p in &node.preds {
                        let pn = self.store.node(p)?;
                        if vi.covers(pn.chain, pn.seq) {
                            found.push(v);
                            common.push(p);
                        }
                    }
                }
            }
            *fork = self.hashes(found)?;
        }
        result.common = self.hashes(common)?;
        Ok(result)
    }

    /// `g(s)` for node `(c, s)`: how much of `vi` its history holds.
    fn growth(&self, c: ChainId, s: Seq, vi: &Clock) -> Result<u64, DagError> {
        let node = self.store.node(self.store.chain_member(c, s)?)?;
        Ok((0..vi.width()).map(|k| u64::from(node.clock.get(k).min(vi.get(k)))).sum())
    }

    /// Pushes every `s` in `(lo, hi]` with `g(s) > g(s - 1)`.
    fn bisect_growth(
        &self,
        c: ChainId,
        (lo, g_lo): (Seq, u64),
        (hi, g_hi): (Seq, u64),
        vi: &Clock,
        out: &mut Vec<Seq>,
    ) -> Result<(), DagError> {
        if g_lo == g_hi {
            return Ok(());
        }
        if hi == lo + 1 {
            out.push(hi);
            return Ok(());
        }
        let mid = lo + (hi - lo) / 2;
        let g_mid = self.growth(c, mid, vi)?;
        self.bisect_growth(c, (lo, g_lo), (mid, g_mid), vi, out)?;
        self.bisect_growth(c, (mid, g_mid), (hi, g_hi), vi, out)
    }

    /// The minimal cover of the entries in `H(from)` that match `filter` (and `predicate`):
    /// the last matching change on every backward path from `from`.
    pub fn cover_with_filter(
        &self,
        from: &Position,
        filter: &MetaFilter,
        predicate: Option<EntryPredicate<'_>>,
    ) -> Result<Position, DagError> {
        self.filtered_cover(from, None, filter, predicate)
    }

    /// Like [`Dag::cover_with_filter`], but only entries concurrent to every member of
    /// `concurrent_to` (neither in its history nor after it) can be taken. This finds the
    /// barrier operations concurrent to a position.
    pub fn concurrent_cover_with_filter(
        &self,
        from: &Position,
        concurrent_to: &Position,
        filter: &MetaFilter,
        predicate: Option<EntryPredicate<'_>>,
    ) -> Result<Position, DagError> {
        self.filtered_cover(from, Some(concurrent_to), filter, predicate)
    }

    fn filtered_cover(
        &self,
        from: &Position,
        concurrent_to: Option<&Position>,
        filter: &MetaFilter,
        mut predicate: Option<EntryPredicate<'_>>,
    ) -> Result<Position, DagError> {
        let vfrom = self.position_clock(&self.resolve(from)?)?;
        let others = match concurrent_to {
            Some(p) => self.resolve(p)?,
            None => Vec::new(),
        };
        // Members of the histories of `concurrent_to` are not concurrent to it.
        let vct = self.position_clock(&others)?;
        let mut others_at = Vec::with_capacity(others.len());
        for id in &others {
            let n = self.store.node(*id)?;
            others_at.push((n.chain, n.seq));
        }
        let mut candidates = Vec::new();
        for c in 0..vfrom.width() {
            let lo = vct.get(c) + 1;
            let mut hi = vfrom.get(c);
            // Nodes after a member of `concurrent_to` are not concurrent to it either; on a
            // chain they form a suffix, so cut the range at the first one.
            for &(oc, os) in &others_at {
                if lo > hi {
                    break;
                }
                if let Some(first) = self.first_reaching(c, lo, hi, oc, os)? {
                    hi = first - 1;
                }
            }
            if lo > hi {
                continue;
            }
            if let Some(id) = self.latest_match(c, lo, hi, filter, &mut predicate)? {
                candidates.push(id);
            }
        }
        let maximal = self.maximal(candidates)?;
        self.hashes(maximal)
    }

    /// The first `s` in `lo..=hi` whose node has `(oc, os)` in its history, if any.
    fn first_reaching(&self, c: ChainId, lo: Seq, hi: Seq, oc: ChainId, os: Seq) -> Result<Option<Seq>, DagError> {
        let reaches = |s: Seq| -> Result<bool, DagError> {
            Ok(self.store.node(self.store.chain_member(c, s)?)?.clock.covers(oc, os))
        };
        if !reaches(hi)? {
            return Ok(None);
        }
        let (mut lo, mut hi) = (lo, hi);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if reaches(mid)? {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        Ok(Some(lo))
    }

    /// The highest node of chain `c` in `lo..=hi` that matches.
    fn latest_match(
        &self,
        c: ChainId,
        lo: Seq,
        mut hi: Seq,
        filter: &MetaFilter,
        predicate: &mut Option<EntryPredicate<'_>>,
    ) -> Result<Option<NodeId>, DagError> {
        let driving = filter.driving_tag();
        while lo <= hi {
            let s = match &driving {
                Some((tag, _)) => match self.store.latest_tagged(tag, c, lo, hi)? {
                    Some(s) => s,
                    None => return Ok(None),
                },
                None => hi,
            };
            let id = self.store.chain_member(c, s)?;
            let complete = matches!(driving, Some((_, true))) && predicate.is_none();
            if complete || self.accepts(id, filter, predicate)? {
                return Ok(Some(id));
            }
            hi = s - 1;
        }
        Ok(None)
    }

    fn accepts(
        &self,
        id: NodeId,
        filter: &MetaFilter,
        predicate: &mut Option<EntryPredicate<'_>>,
    ) -> Result<bool, DagError> {
        let entry = self.store.entry(id)?;
        Ok(filter.matches(&entry.meta) && predicate.as_mut().is_none_or(|p| p(&entry.hash, &entry)))
    }
}
