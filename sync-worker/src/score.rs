//! Peer misbehaviour: penalties that decay, bans that expire, and a frame budget against
//! floods. Times are milliseconds on the caller's clock, so tests control them.

use std::collections::HashMap;
use std::hash::Hash;

/// How hard each kind of misbehaviour counts. A score of [`BAN_SCORE`] bans the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offence {
    /// A frame that is not a valid message (bad JSON, unknown type, bad hash text, too long).
    Malformed,
    /// A header or payload whose hash does not match, or an entry the database rejected.
    BadEntry,
    /// More than was asked for: extra headers, payloads not requested, counts over the limit,
    /// sequence numbers out of order.
    Unsolicited,
    /// A request of ours that went unanswered past the timeout.
    Stalled,
    /// Frames faster than the budget allows, or too many requests at once.
    Flood,
    /// A response to a request we do not know (it may have been cancelled: mild).
    Stray,
}

impl Offence {
    pub fn penalty(self) -> u32 {
        match self {
            Offence::Malformed | Offence::BadEntry => BAN_SCORE,
            Offence::Unsolicited => 40,
            Offence::Stalled => 25,
            Offence::Flood => 10,
            Offence::Stray => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Offence::Malformed => "malformed message",
            Offence::BadEntry => "invalid entry",
            Offence::Unsolicited => "unsolicited data",
            Offence::Stalled => "stalled request",
            Offence::Flood => "flooding",
            Offence::Stray => "stray response",
        }
    }
}

/// Score at which a peer is banned.
pub const BAN_SCORE: u32 = 100;

/// Points forgiven per second of good behaviour.
const DECAY_PER_SEC: u32 = 1;

/// Frames a peer may send in a burst, and per second after that.
pub const FRAME_BURST: u32 = 20_000;
pub const FRAMES_PER_SEC: u32 = 5_000;

#[derive(Clone, Debug)]
struct Standing {
    score: u32,
    updated_ms: u64,
    tokens: u32,
    refilled_ms: u64,
    banned_until_ms: Option<u64>,
}

/// Scores and bans of every peer seen.
#[derive(Debug)]
pub struct Scores<P> {
    peers: HashMap<P, Standing>,
    ban_ms: u64,
}

impl<P: Clone + Eq + Hash> Scores<P> {
    /// `ban_ms`: how long a ban lasts.
    pub fn new(ban_ms: u64) -> Scores<P> {
        Scores { peers: HashMap::new(), ban_ms }
    }

    fn standing(&mut self, peer: &P, now_ms: u64) -> &mut Standing {
        let s = self.peers.entry(peer.clone()).or_insert(Standing {
            score: 0,
            updated_ms: now_ms,
            tokens: FRAME_BURST,
            refilled_ms: now_ms,
            banned_until_ms: None,
        });
        let secs = (now_ms.saturating_sub(s.updated_ms) / 1000) as u32;
        if secs > 0 {
            s.score = s.score.saturating_sub(secs.saturating_mul(DECAY_PER_SEC));
            s.updated_ms = now_ms;
        }
        s
    }

    /// Records an offence; returns true when it bans the peer (it was not banned before).
    pub fn penalize(&mut self, peer: &P, offence: Offence, now_ms: u64) -> bool {
        let ban_ms = self.ban_ms;
        let s = self.standing(peer, now_ms);
        s.score = s.score.saturating_add(offence.penalty());
        if s.score >= BAN_SCORE && s.banned_until_ms.is_none_or(|t| t <= now_ms) {
            s.banned_until_ms = Some(now_ms + ban_ms);
            s.score = 0;
            return true;
        }
        false
    }

    /// Spends one frame of the peer's budget; false when the budget is exhausted.
    pub fn take_frame(&mut self, peer: &P, now_ms: u64) -> bool {
        let s = self.standing(peer, now_ms);
        let elapsed = now_ms.saturating_sub(s.refilled_ms);
        let refill = (elapsed.saturating_mul(u64::from(FRAMES_PER_SEC)) / 1000) as u32;
        if refill > 0 {
            s.tokens = s.tokens.saturating_add(refill).min(FRAME_BURST);
            s.refilled_ms = now_ms;
        }
        if s.tokens == 0 {
            return false;
        }
        s.tokens -= 1;
        true
    }

    /// When the peer's ban ends, if it is banned now.
    pub fn banned_until(&self, peer: &P, now_ms: u64) -> Option<u64> {
        self.peers.get(peer).and_then(|s| s.banned_until_ms).filter(|t| *t > now_ms)
    }

    pub fn score(&self, peer: &P) -> u32 {
        self.peers.get(peer).map(|s| s.score).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offences_add_up_decay_and_ban() {
        let mut s: Scores<&str> = Scores::new(60_000);
        assert!(!s.penalize(&"p", Offence::Unsolicited, 0));
        assert!(!s.penalize(&"p", Offence::Unsolicited, 0));
        assert_eq!(s.score(&"p"), 80);
        // Twenty seconds of good behaviour forgive twenty points.
        assert!(!s.penalize(&"p", Offence::Stray, 20_000));
        assert_eq!(s.score(&"p"), 62);
        assert!(s.penalize(&"p", Offence::Unsolicited, 20_000));
        assert_eq!(s.banned_until(&"p", 20_001), Some(80_000));
        assert_eq!(s.banned_until(&"p", 80_000), None);
        assert!(s.penalize(&"q", Offence::BadEntry, 0), "one forged entry is enough");
    }

    #[test]
    fn frame_budget_refills() {
        let mut s: Scores<&str> = Scores::new(60_000);
        for _ in 0..FRAME_BURST {
            assert!(s.take_frame(&"p", 0));
        }
        assert!(!s.take_frame(&"p", 0));
        assert!(s.take_frame(&"p", 1));
    }
}
