//! Decoded commits handed from the backend that decodes the WAL to the backend that seals them.
//!
//! Decoding resets every catalog cache of the backend that runs it, before and after each run
//! (the historic snapshots it reads the catalog under must not leave entries behind, nor find
//! current ones). A backend that then appends entries plans its statements and builds its
//! relation cache entries again after every run. So the sync worker decodes in one backend and
//! seals in another: the first hands over what it decoded as a [`Batch`] in this binary form,
//! the second signs and stores it. Both run the same library on the same server; the form is
//! still checked strictly on arrival, and only a privileged caller may hand a batch in.
//!
//! Layout (integers little-endian; a string is its byte length as `u32`, then UTF-8):
//!
//! ```text
//! batch  := version:u8 (1) more:u8 (0|1) count:u32 commit{count}
//! commit := end_lsn:u64 commit_time:i64 has_author:u8 (0|1) [author:str] groups:u32 group{groups}
//! group  := group_id:str ops:u32 op{ops}
//! op     := 0:u8 canonical:str has_stored:u8 (0|1) [stored:str]   an operation's texts
//!         | 1:u8 json:str                                          an operation as JSON
//! ```
//!
//! Nothing follows the last commit. What decodes encodes back to the same bytes.

use crate::op_text::OpText;
use crate::payload::Op;

/// A change of one row, encoded: an insert as text (no JSON map is built for it), anything
/// else as an operation.
#[derive(Clone, Debug, PartialEq)]
pub enum RowOp {
    Decoded(Op),
    Text(OpText),
}

/// One committed transaction's changes to replicated tables.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Commit {
    /// Where its commit record ends in the WAL.
    pub end_lsn: u64,
    /// Its commit time (PostgreSQL microseconds since 2000).
    pub commit_time: i64,
    /// The identity it wrote as, if the capture trigger named one.
    pub author: Option<String>,
    /// Its row changes by group id, in the order they were made.
    pub groups: Vec<(String, Vec<RowOp>)>,
}

impl Commit {
    /// How many row operations it has.
    pub fn rows(&self) -> usize {
        self.groups.iter().map(|(_, ops)| ops.len()).sum()
    }
}

/// Commits in commit order, and whether decoding stopped before the end of the WAL it was
/// asked to read (the batch was full).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Batch {
    pub more: bool,
    pub commits: Vec<Commit>,
}

const VERSION: u8 = 1;

/// Why bytes are not a batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandoffError {
    #[error("decoded commits: version {0} is not 1")]
    Version(u8),
    #[error("decoded commits: the bytes end inside {0}")]
    Truncated(&'static str),
    #[error("decoded commits: {0} bytes follow the last commit")]
    Trailing(usize),
    #[error("decoded commits: {what} is {byte}, not 0 or 1")]
    Flag { what: &'static str, byte: u8 },
    #[error("decoded commits: {0} is not UTF-8")]
    Utf8(&'static str),
    #[error("decoded commits: operation kind {0} is unknown")]
    OpKind(u8),
    #[error("decoded commits: an operation does not read: {0}")]
    Op(String),
    #[error("decoded commits: commit ending at {end} follows one ending at {before}")]
    Order { before: u64, end: u64 },
}

impl Batch {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.commits.len() * 160);
        out.push(VERSION);
        out.push(u8::from(self.more));
        put_len(&mut out, self.commits.len());
        for c in &self.commits {
            out.extend_from_slice(&c.end_lsn.to_le_bytes());
            out.extend_from_slice(&c.commit_time.to_le_bytes());
            match &c.author {
                Some(a) => {
                    out.push(1);
                    put_str(&mut out, a);
                }
                None => out.push(0),
            }
            put_len(&mut out, c.groups.len());
            for (group, ops) in &c.groups {
                put_str(&mut out, group);
                put_len(&mut out, ops.len());
                for op in ops {
                    match op {
                        RowOp::Text(t) => {
                            out.push(0);
                            put_str(&mut out, t.canonical());
                            match t.stored_if_different() {
                                Some(s) => {
                                    out.push(1);
                                    put_str(&mut out, s);
                                }
                                None => out.push(0),
                            }
                        }
                        RowOp::Decoded(op) => {
                            out.push(1);
                            put_str(&mut out, &op.to_value().to_string());
                        }
                    }
                }
            }
        }
        out
    }

    /// From a batch's first bytes only: whether decoding stopped before the end of the WAL,
    /// and how many commits it holds (`None`: not a batch of this version).
    pub fn peek(bytes: &[u8]) -> Option<(bool, usize)> {
        let mut r = Reader(bytes);
        if r.u8("the version").ok()? != VERSION {
            return None;
        }
        Some((r.flag("more").ok()?, r.count("the commit count").ok()?))
    }

    /// Reads a batch, refusing anything but the exact form [`Batch::encode`] writes, with
    /// commits in ascending WAL order.
    pub fn decode(bytes: &[u8]) -> Result<Batch, HandoffError> {
        let mut r = Reader(bytes);
        let version = r.u8("the version")?;
        if version != VERSION {
            return Err(HandoffError::Version(version));
        }
        let more = r.flag("more")?;
        let count = r.count("the commit count")?;
        let mut commits = Vec::with_capacity(count.min(r.0.len() / 21));
        for _ in 0..count {
            let end_lsn = r.u64("a commit position")?;
            if let Some(before) = commits.last().map(|c: &Commit| c.end_lsn) {
                if end_lsn <= before {
                    return Err(HandoffError::Order { before, end: end_lsn });
                }
            }
            let commit_time = r.u64("a commit time")? as i64;
            let author = if r.flag("has_author")? { Some(r.str("an author")?) } else { None };
            let group_count = r.count("a group count")?;
            let mut groups = Vec::with_capacity(group_count.min(r.0.len() / 8));
            for _ in 0..group_count {
                let group = r.str("a group id")?;
                let op_count = r.count("an operation count")?;
                let mut ops = Vec::with_capacity(op_count.min(r.0.len() / 5));
                for _ in 0..op_count {
                    ops.push(match r.u8("an operation kind")? {
                        0 => {
                            let canonical = r.str("an operation's text")?;
                            let stored =
                                if r.flag("has_stored")? { Some(r.str("an operation's stored text")?) } else { None };
                            RowOp::Text(OpText::from_texts(canonical, stored))
                        }
                        1 => {
                            let json = r.str("an operation")?;
                            let value = crate::json::parse(&json).map_err(|e| HandoffError::Op(e.to_string()))?;
                            let op = Op::from_owned(value).map_err(|e| HandoffError::Op(e.to_string()))?;
                            // Only the form encode writes: JSON as serde writes the value.
                            let written = op.to_value().to_string();
                            if written != json {
                                return Err(HandoffError::Op("not in the form it is written".into()));
                            }
                            RowOp::Decoded(op)
                        }
                        kind => return Err(HandoffError::OpKind(kind)),
                    });
                }
                groups.push((group, ops));
            }
            commits.push(Commit { end_lsn, commit_time, author, groups });
        }
        if !r.0.is_empty() {
            return Err(HandoffError::Trailing(r.0.len()));
        }
        Ok(Batch { more, commits })
    }
}

fn put_len(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_len(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&[u8], HandoffError> {
        if self.0.len() < n {
            return Err(HandoffError::Truncated(what));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, HandoffError> {
        Ok(self.take(1, what)?[0])
    }

    fn flag(&mut self, what: &'static str) -> Result<bool, HandoffError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            byte => Err(HandoffError::Flag { what, byte }),
        }
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, HandoffError> {
        let b = self.take(8, what)?;
        Ok(u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
    }

    fn count(&mut self, what: &'static str) -> Result<usize, HandoffError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    fn str(&mut self, what: &'static str) -> Result<String, HandoffError> {
        let n = self.count(what)?;
        let bytes = self.take(n, what)?;
        std::str::from_utf8(bytes).map(str::to_string).map_err(|_| HandoffError::Utf8(what))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Batch {
        let insert = OpText::from_op(
            &Op::from_value(&json!({"op": "insert", "table": "t", "row": {"id": 1, "s": "é\u{1}"}})).unwrap(),
        )
        .unwrap();
        let update =
            Op::from_value(&json!({"op": "update", "table": "t", "key": {"id": 1}, "set": {"s": "x"}, "unset": []}))
                .unwrap();
        Batch {
            more: true,
            commits: vec![
                Commit {
                    end_lsn: 10,
                    commit_time: -5,
                    author: Some("alice".into()),
                    groups: vec![("g1".into(), vec![RowOp::Text(insert), RowOp::Decoded(update)])],
                },
                Commit {
                    end_lsn: 11,
                    commit_time: 7,
                    author: None,
                    groups: vec![("g2".into(), vec![]), ("g1".into(), vec![])],
                },
            ],
        }
    }

    #[test]
    fn a_batch_reads_back_as_written_and_writes_back_the_same_bytes() {
        let batch = sample();
        let bytes = batch.encode();
        let back = Batch::decode(&bytes).unwrap();
        assert_eq!(back, batch);
        assert_eq!(back.encode(), bytes);
        assert_eq!(Batch::peek(&bytes), Some((true, 2)));
        assert_eq!(Batch::decode(&Batch::default().encode()).unwrap(), Batch::default());
        assert_eq!(Batch::peek(&Batch::default().encode()), Some((false, 0)));
    }

    #[test]
    fn every_cut_and_every_extra_byte_is_refused() {
        let bytes = sample().encode();
        for n in 0..bytes.len() {
            assert!(Batch::decode(&bytes[..n]).is_err(), "cut at {n}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(Batch::decode(&longer), Err(HandoffError::Trailing(1)));
    }

    #[test]
    fn commits_out_of_wal_order_are_refused() {
        let mut batch = sample();
        batch.commits[1].end_lsn = 10;
        assert_eq!(Batch::decode(&batch.encode()), Err(HandoffError::Order { before: 10, end: 10 }));
    }

    #[test]
    fn flags_and_kinds_other_than_those_written_are_refused() {
        let mut bytes = sample().encode();
        bytes[1] = 2;
        assert!(matches!(Batch::decode(&bytes), Err(HandoffError::Flag { .. })));
        let mut bytes = Batch {
            more: false,
            commits: vec![Commit {
                end_lsn: 1,
                commit_time: 0,
                author: None,
                groups: vec![("g".into(), vec![RowOp::Text(OpText::from_texts("{}".into(), None))])],
            }],
        }
        .encode();
        let kind_at = bytes.len() - 1 - 4 - 2 - 1;
        assert_eq!(bytes[kind_at], 0);
        bytes[kind_at] = 7;
        assert_eq!(Batch::decode(&bytes), Err(HandoffError::OpKind(7)));
    }
}
