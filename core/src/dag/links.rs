//! A node's links into the DAG — its predecessors and its clock — packed into a few bytes for
//! storage.
//!
//! Stored as two `int4[]` columns, the two took 50 bytes for a single-row entry of one chain
//! (an array's header is 20 bytes, then 4 per element). Packed, the same takes 4. The form:
//!
//! ```text
//! varint(#preds)  varint(node - pred) for each predecessor, in the node's order
//! varint(#clock)  varint(clock[c]) for each chain c
//! ```
//!
//! Varints are LEB128 (7 bits per byte, low first). A predecessor is always stored before
//! the node (node ids are given in append order), so `node - pred` is at least 1 and small
//! for the usual recent predecessor. Decoding refuses anything that does not re-encode to the
//! same bytes: overlong varints, values past `u32`, a predecessor at or past the node, and
//! trailing bytes. Stored bytes come only from [`pack`], so a refusal means a damaged row.

use super::store::{Clock, NodeId};

/// Why packed links could not be made or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinksError {
    #[error("predecessor {pred} is not before node {node}")]
    PredecessorNotBefore { node: NodeId, pred: NodeId },
    #[error("packed links end early")]
    Truncated,
    #[error("packed links hold a number that is not a minimal u32 varint")]
    BadVarint,
    #[error("packed links have {0} bytes after the clock")]
    Trailing(usize),
}

/// Packs `preds` and `clock` of node `node`.
pub fn pack(node: NodeId, preds: &[NodeId], clock: &Clock) -> Result<Vec<u8>, LinksError> {
    let mut out = Vec::with_capacity(2 + preds.len() + clock.0.len() * 2);
    put(&mut out, len_u32(preds.len()));
    for &pred in preds {
        if pred >= node {
            return Err(LinksError::PredecessorNotBefore { node, pred });
        }
        put(&mut out, node.0 - pred.0);
    }
    put(&mut out, len_u32(clock.0.len()));
    for &seq in &clock.0 {
        put(&mut out, seq);
    }
    Ok(out)
}

/// Unpacks what [`pack`] made for node `node`.
pub fn unpack(node: NodeId, bytes: &[u8]) -> Result<(Vec<NodeId>, Clock), LinksError> {
    let mut r = Reader { bytes, at: 0 };
    let n = r.count()?;
    let mut preds = Vec::with_capacity(n);
    for _ in 0..n {
        let back = r.next()?;
        let pred = node.0.checked_sub(back).filter(|_| back > 0).ok_or(LinksError::BadVarint)?;
        preds.push(NodeId(pred));
    }
    let n = r.count()?;
    let mut clock = Vec::with_capacity(n);
    for _ in 0..n {
        clock.push(r.next()?);
    }
    match bytes.len() - r.at {
        0 => Ok((preds, Clock(clock))),
        rest => Err(LinksError::Trailing(rest)),
    }
}

/// Lengths beyond `u32` cannot occur: a node has at most `MAX_PREDECESSORS` predecessors and
/// one clock slot per chain, and chains are numbered by `u32`.
fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn put(out: &mut Vec<u8>, mut v: u32) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn next(&mut self) -> Result<u32, LinksError> {
        let mut v: u64 = 0;
        for i in 0..5 {
            let b = *self.bytes.get(self.at).ok_or(LinksError::Truncated)?;
            self.at += 1;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                // A last byte of 0 after others is an overlong form of a shorter varint.
                if (b == 0 && i > 0) || v > u64::from(u32::MAX) {
                    return Err(LinksError::BadVarint);
                }
                return Ok(v as u32);
            }
        }
        Err(LinksError::BadVarint)
    }

    /// A count of items still to read, each at least one byte: a count larger than what is
    /// left is refused before anything is allocated for it.
    fn count(&mut self) -> Result<usize, LinksError> {
        let n = self.next()? as usize;
        if n > self.bytes.len() - self.at {
            return Err(LinksError::Truncated);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_single_row_entry_of_one_chain_takes_four_bytes() {
        let packed = pack(NodeId(5), &[NodeId(3)], &Clock(vec![5])).unwrap();
        assert_eq!(packed, vec![1, 2, 1, 5]);
        assert_eq!(unpack(NodeId(5), &packed).unwrap(), (vec![NodeId(3)], Clock(vec![5])));
        assert_eq!(pack(NodeId(0), &[], &Clock(vec![1])).unwrap(), vec![0, 1, 1]);
    }

    #[test]
    fn damaged_bytes_are_refused() {
        let node = NodeId(10);
        assert_eq!(
            pack(node, &[NodeId(10)], &Clock::default()),
            Err(LinksError::PredecessorNotBefore { node, pred: node })
        );
        assert_eq!(unpack(node, &[]), Err(LinksError::Truncated));
        assert_eq!(unpack(node, &[1]), Err(LinksError::Truncated));
        // A predecessor 0 or 11 back from node 10.
        assert_eq!(unpack(node, &[1, 0, 0]), Err(LinksError::BadVarint));
        assert_eq!(unpack(node, &[1, 11, 0]), Err(LinksError::BadVarint));
        // 1 written in two bytes; a number past u32; a count larger than the bytes left.
        assert_eq!(unpack(node, &[0, 1, 0x81, 0]), Err(LinksError::BadVarint));
        assert_eq!(unpack(node, &[0, 1, 0xff, 0xff, 0xff, 0xff, 0x1f]), Err(LinksError::BadVarint));
        assert_eq!(unpack(node, &[0, 200, 1]), Err(LinksError::Truncated));
        assert_eq!(unpack(node, &[0, 0, 7]), Err(LinksError::Trailing(1)));
    }

    proptest! {
        #[test]
        fn packed_links_round_trip(
            node in 1u32..,
            backs in proptest::collection::vec(1u32.., 0..20),
            clock in proptest::collection::vec(any::<u32>(), 0..40),
        ) {
            let preds: Vec<NodeId> = backs.iter().map(|b| NodeId(node - (1 + (b - 1) % node))).collect();
            let clock = Clock(clock);
            let packed = pack(NodeId(node), &preds, &clock).unwrap();
            prop_assert_eq!(unpack(NodeId(node), &packed).unwrap(), (preds, clock));
        }

        #[test]
        fn any_bytes_unpack_to_links_that_pack_back_the_same_or_are_refused(
            node in any::<u32>(),
            bytes in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            if let Ok((preds, clock)) = unpack(NodeId(node), &bytes) {
                prop_assert_eq!(pack(NodeId(node), &preds, &clock).unwrap(), bytes);
            }
        }
    }
}
