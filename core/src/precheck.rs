//! The checks of an incoming entry that need nothing from storage, run over a whole batch on
//! several threads: the entry and payload hashes, the payload's strict decoding, and the
//! signature (bound to the entry's position) against the author's key.
//!
//! An author's key is known from its `KeyId` alone when the caller has seen the key anywhere
//! (a key's id is the hash of the key, so any record of it is the right one). Whether that
//! author may write at the entry's position is a question about history, left to the caller.

use std::borrow::Cow;
use std::collections::HashMap;

use serde_json::Value;

use crate::entry::{Entry, Header};
use crate::hash::{EntryHash, GroupId, HashAlgorithm};
use crate::identity::{KeyId, PublicKey, SignatureBatch};
use crate::payload::{PayloadError, SignedPayload};

/// What the storage-free checks found about one entry.
#[derive(Debug)]
pub enum Prechecked {
    /// Hashes match, the payload decodes, and the signature was verified with the author's key.
    Signed(SignedPayload),
    /// Hashes match and the payload decodes, but it carries no signature: it is valid only if a
    /// later signed entry of its author covers it ([`crate::signature_cover`]).
    Unsigned(SignedPayload),
    /// Hashes match and the payload decodes, but the author's key was not among those given:
    /// the caller must find the key (or reject the author) and verify the signature itself.
    UnknownAuthor(SignedPayload),
    /// The entry is invalid; the reason is for a human.
    Invalid(String),
}

/// An entry to check: decoded ([`Entry`]) or with its payload still text
/// ([`crate::wire::WireEntry`], parsed on the checking thread and dropped after).
pub trait Incoming: Send {
    fn hash(&self) -> &EntryHash;
    fn header(&self) -> &Header;
    /// The payload as a value; an error says why the text is not JSON.
    fn payload_value(&self) -> Result<Cow<'_, Value>, String>;
}

impl Incoming for Entry {
    fn hash(&self) -> &EntryHash {
        &self.hash
    }
    fn header(&self) -> &Header {
        &self.header
    }
    fn payload_value(&self) -> Result<Cow<'_, Value>, String> {
        Ok(Cow::Borrowed(&self.payload))
    }
}

impl Incoming for crate::wire::WireEntry<'_> {
    fn hash(&self) -> &EntryHash {
        &self.hash
    }
    fn header(&self) -> &Header {
        &self.header
    }
    fn payload_value(&self) -> Result<Cow<'_, Value>, String> {
        crate::json::parse(self.payload).map(Cow::Owned).map_err(|e| e.to_string())
    }
}

/// The checks before the signature: hashes, decoding, and the message the signature must be
/// over when the author's key is known.
enum Checked<'k> {
    Done(Prechecked),
    /// The payload, the author's key, and the signed message.
    Sign(SignedPayload, &'k PublicKey, Vec<u8>),
}

fn check_unsigned<'k>(
    e: &impl Incoming,
    alg: HashAlgorithm,
    group: &GroupId,
    keys: &'k HashMap<KeyId, PublicKey>,
) -> Checked<'k> {
    let value = match e.payload_value() {
        Ok(v) => v,
        Err(err) => return Checked::Done(Prechecked::Invalid(format!("payload is not JSON: {err}"))),
    };
    if let Err(err) = crate::entry::verify_hashes(alg, e.hash(), e.header(), &value) {
        return Checked::Done(Prechecked::Invalid(err.to_string()));
    }
    let payload = match SignedPayload::from_value(&value) {
        Ok(p) => p,
        Err(err) => return Checked::Done(Prechecked::Invalid(format!("invalid payload: {err}"))),
    };
    if payload.genesis.is_some() {
        return Checked::Done(Prechecked::Invalid("a second genesis entry".into()));
    }
    if payload.signature.is_none() {
        return Checked::Done(Prechecked::Unsigned(payload));
    }
    match keys.get(&payload.author) {
        None => Checked::Done(Prechecked::UnknownAuthor(payload)),
        Some(key) => match payload.message_to_verify(key, Some(group), &e.header().prev) {
            Ok(msg) => Checked::Sign(payload, key, msg),
            Err(err) => Checked::Done(Prechecked::Invalid(err.to_string())),
        },
    }
}

/// Prechecks a run of entries on this thread, their signatures as one batch. A batch that
/// fails is checked signature by signature to find the bad ones; both ways apply the same
/// rule ([`SignatureBatch`]), so the outcome does not depend on how entries were batched.
fn precheck_run(
    entries: &[impl Incoming],
    alg: HashAlgorithm,
    group: &GroupId,
    keys: &HashMap<KeyId, PublicKey>,
) -> Vec<Prechecked> {
    let checked: Vec<Checked> = entries.iter().map(|e| check_unsigned(e, alg, group, keys)).collect();
    let mut batch = SignatureBatch::new();
    for c in &checked {
        if let Checked::Sign(SignedPayload { signature: Some(signature), .. }, key, msg) = c {
            batch.push(key, msg, signature);
        }
    }
    let all_valid = batch.verify();
    checked
        .into_iter()
        .map(|c| match c {
            Checked::Done(p) => p,
            Checked::Sign(payload, _, _) if all_valid => Prechecked::Signed(payload),
            Checked::Sign(payload, key, msg) => match payload.signature.as_ref().map(|s| key.verify(&msg, s)) {
                Some(Ok(())) => Prechecked::Signed(payload),
                _ => Prechecked::Invalid(PayloadError::BadSignature { author: payload.author }.to_string()),
            },
        })
        .collect()
}

/// Prechecks `entries` on `workers` threads besides the calling one (none: on the calling
/// thread), handing them back with their results to `take`, in order, `chunk` entries at a
/// time, as soon as each chunk and all before it are checked: the caller's work on the first
/// chunks (storing, replaying) overlaps the checks of the later ones. `take` runs on the
/// calling thread. An error from `take` stops the checks and is returned.
pub fn precheck_stream<T: Incoming, E>(
    entries: Vec<T>,
    alg: HashAlgorithm,
    group: &GroupId,
    keys: &HashMap<KeyId, PublicKey>,
    workers: usize,
    chunk: usize,
    mut take: impl FnMut(Vec<(T, Prechecked)>) -> Result<(), E>,
) -> Result<(), E> {
    let chunk = chunk.max(1);
    let workers = workers.min(64);
    let mut chunks: Vec<Vec<T>> = Vec::with_capacity(entries.len().div_ceil(chunk));
    let mut rest = entries.into_iter().peekable();
    while rest.peek().is_some() {
        chunks.push(rest.by_ref().take(chunk).collect());
    }
    let run = |part: Vec<T>| -> Vec<(T, Prechecked)> {
        // Every step returns errors rather than panic on input; should one panic anyway, its
        // entries are refused rather than lost silently.
        let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| precheck_run(&part, alg, group, keys)));
        let results = checked.unwrap_or_else(|_| {
            part.iter().map(|_| Prechecked::Invalid("the entry's checks failed unexpectedly".into())).collect()
        });
        part.into_iter().zip(results).collect()
    };
    if workers == 0 || chunks.len() < 2 {
        for part in chunks {
            take(run(part))?;
        }
        return Ok(());
    }
    let n = chunks.len();
    let queue = std::sync::Mutex::new(chunks.into_iter().enumerate().collect::<std::collections::VecDeque<_>>());
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::channel::<(usize, Vec<(T, Prechecked)>)>();
        for _ in 0..workers {
            let (tx, queue, stop, run) = (tx.clone(), &queue, &stop, &run);
            s.spawn(move || loop {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                let next = match queue.lock() {
                    Ok(mut q) => q.pop_front(),
                    Err(_) => return,
                };
                let Some((k, part)) = next else { return };
                if tx.send((k, run(part))).is_err() {
                    return;
                }
            });
        }
        drop(tx);
        let mut ready: std::collections::BTreeMap<usize, Vec<(T, Prechecked)>> = Default::default();
        // Every worker is gone. Each sends every chunk it takes (`run` catches panics), so
        // what is missing is still queued: it is checked here.
        let collect_left = |ready: &mut std::collections::BTreeMap<usize, Vec<(T, Prechecked)>>| {
            let left: Vec<(usize, Vec<T>)> = match queue.lock() {
                Ok(mut q) => q.drain(..).collect(),
                Err(poisoned) => poisoned.into_inner().drain(..).collect(),
            };
            for (k, part) in left {
                ready.insert(k, run(part));
            }
        };
        let mut next = 0;
        while next < n {
            if let Some(part) = ready.remove(&next) {
                if let Err(e) = take(part) {
                    stop.store(true, std::sync::atomic::Ordering::Relaxed);
                    return Err(e);
                }
                next += 1;
                continue;
            }
            // Chunk `next` is not back yet. Take what is checked; else, rather than wait, check
            // a queued chunk here (the workers may be fewer than the cores, or descheduled);
            // else wait for a worker.
            if let Ok((k, part)) = rx.try_recv() {
                ready.insert(k, part);
                continue;
            }
            let queued = queue.lock().ok().and_then(|mut q| q.pop_front());
            if let Some((k, part)) = queued {
                ready.insert(k, run(part));
                continue;
            }
            match rx.recv() {
                Ok((k, part)) => {
                    ready.insert(k, part);
                }
                Err(_) => {
                    collect_left(&mut ready);
                    assert!(ready.contains_key(&next), "chunk {next} of the checked entries was lost");
                }
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::Position;
    use crate::identity::Keypair;
    use crate::payload::Op;
    use serde_json::json;

    fn entry(kp: &Keypair, group: &GroupId, prev: &Position, n: i64) -> Entry {
        let ops = vec![Op::Insert {
            table: "t".into(),
            row: json!({"id": n.to_string()}).as_object().cloned().unwrap_or_default(),
        }];
        let p = SignedPayload::sign(kp, group, ops, prev).expect("sign");
        Entry::new(HashAlgorithm::Blake3, p.to_value(), prev.clone(), Default::default()).expect("entry")
    }

    /// The streaming checks hand every entry back once, in order, with the same results as
    /// the batch, and stop at the caller's first error.
    #[test]
    fn streams_entries_back_in_order() {
        let alice = Keypair::generate();
        let group = GroupId(HashAlgorithm::Blake3.digest(b"group"));
        let mut keys = HashMap::new();
        keys.insert(alice.public().key_id(), alice.public());
        let prev: Position = [group.genesis()].into_iter().collect();
        let mut entries: Vec<Entry> = (0..300).map(|n| entry(&alice, &group, &prev, n)).collect();
        entries[77].payload["author"] = json!("x");
        for threads in [0, 1, 2] {
            let mut seen = Vec::new();
            let mut chunks = 0;
            let r: Result<(), ()> =
                precheck_stream(entries.clone(), HashAlgorithm::Blake3, &group, &keys, threads, 32, |part| {
                    assert!(part.len() <= 32);
                    chunks += 1;
                    for (e, p) in part {
                        seen.push((e.hash, matches!(p, Prechecked::Signed(_))));
                    }
                    Ok(())
                });
            assert!(r.is_ok());
            assert_eq!(chunks, 300usize.div_ceil(32));
            let expected: Vec<_> = entries.iter().enumerate().map(|(i, e)| (e.hash, i != 77)).collect();
            assert_eq!(seen, expected, "threads {threads}");
            let mut calls = 0;
            let r = precheck_stream(entries.clone(), HashAlgorithm::Blake3, &group, &keys, threads, 32, |_| {
                calls += 1;
                if calls == 3 {
                    Err("stop")
                } else {
                    Ok(())
                }
            });
            assert_eq!((r, calls), (Err("stop"), 3));
        }
    }

    /// A third party that adds a field to another author's signed operation (and rehashes
    /// the entry) gets it refused: operations decode strictly. (A lenient decoder ignored the
    /// field, the signature over the re-encoded operations still held, and the copy was a
    /// second valid entry at the same position.)
    #[test]
    fn a_field_added_to_a_signed_operation_is_refused() {
        let alice = Keypair::generate();
        let group = GroupId(HashAlgorithm::Blake3.digest(b"group"));
        let keys: HashMap<_, _> = [(alice.public().key_id(), alice.public())].into();
        let prev: Position = [group.genesis()].into_iter().collect();
        let genuine = entry(&alice, &group, &prev, 7);
        let mut forged = genuine.payload.clone();
        forged["ops"][0]["note"] = json!("added by someone else");
        let forged = Entry::new(HashAlgorithm::Blake3, forged, prev.clone(), Default::default()).unwrap();
        let checked = precheck_run(&[genuine, forged], HashAlgorithm::Blake3, &group, &keys);
        assert!(matches!(checked[0], Prechecked::Signed(_)));
        match &checked[1] {
            Prechecked::Invalid(reason) => assert!(reason.contains("note"), "{reason}"),
            _ => panic!("the forged entry was accepted"),
        }
    }

    #[test]
    fn verifies_in_parallel_and_in_order() {
        let (alice, mallory) = (Keypair::generate(), Keypair::generate());
        let group = GroupId(HashAlgorithm::Blake3.digest(b"group"));
        let mut keys = HashMap::new();
        keys.insert(alice.public().key_id(), alice.public());
        let prev: Position = [group.genesis()].into_iter().collect();
        let mut entries: Vec<Entry> = (0..200).map(|n| entry(&alice, &group, &prev, n)).collect();
        entries[7] = entry(&mallory, &group, &prev, 7);
        // A signed operation moved to another position no longer verifies.
        let other: Position = [EntryHash(HashAlgorithm::Blake3.digest(b"elsewhere"))].into_iter().collect();
        let moved = entry(&alice, &group, &prev, 9);
        entries[9] =
            Entry::new(HashAlgorithm::Blake3, moved.payload.clone(), other, Default::default()).expect("entry");
        // A flipped payload byte breaks the hashes.
        entries[150].payload["author"] = json!("x");
        let all = |workers: usize| -> Vec<Prechecked> {
            let mut out = Vec::new();
            let r: Result<(), ()> =
                precheck_stream(entries.clone(), HashAlgorithm::Blake3, &group, &keys, workers, 64, |part| {
                    out.extend(part.into_iter().map(|(_, p)| p));
                    Ok(())
                });
            assert!(r.is_ok());
            out
        };
        let out = all(2);
        assert_eq!(out.len(), 200);
        for (i, r) in out.iter().enumerate() {
            match (i, r) {
                (7, Prechecked::UnknownAuthor(_)) => {}
                (9 | 150, Prechecked::Invalid(_)) => {}
                (7 | 9 | 150, other) => panic!("entry {i}: {other:?}"),
                (_, Prechecked::Signed(p)) => assert_eq!(p.author, alice.public().key_id()),
                (_, other) => panic!("entry {i}: {other:?}"),
            }
        }
        let sequential = all(0);
        assert_eq!(format!("{sequential:?}"), format!("{out:?}"));
        // Entries read from their wire text (payloads parsed on the checking threads) get
        // the same results, with one or two workers and with none.
        let texts: Vec<String> = entries.iter().map(|e| e.to_wire().to_string()).collect();
        for workers in [0, 1, 2] {
            let wire: Vec<crate::wire::WireEntry> =
                texts.iter().map(|t| crate::wire::WireEntry::parse(t).expect("wire entry")).collect();
            let mut got = Vec::new();
            let r: Result<(), ()> = precheck_stream(wire, HashAlgorithm::Blake3, &group, &keys, workers, 16, |part| {
                got.extend(part.into_iter().map(|(e, p)| (e.hash, p)));
                Ok(())
            });
            assert!(r.is_ok());
            assert!(got.iter().zip(&entries).all(|((h, _), e)| *h == e.hash), "out of order");
            let results: Vec<&Prechecked> = got.iter().map(|(_, p)| p).collect();
            assert_eq!(format!("{results:?}"), format!("{:?}", out.iter().collect::<Vec<_>>()));
        }
    }
}
