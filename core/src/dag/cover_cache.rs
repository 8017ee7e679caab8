//! Filtered covers at the positions of entries being appended one after another, without a
//! query per entry.
//!
//! Validating an entry asks questions about its position (is the author a live member there,
//! what is the table's schema there), and each is answered from a filtered cover: the latest
//! entries in the position's history that carry one tag. For a position of one entry `E`,
//! that cover follows from its predecessors' without looking at history again:
//! - if `E` carries the tag, the cover is `{E}` (everything else with the tag is below it);
//! - otherwise it is the cover at `E`'s predecessors, since `E` adds nothing that matches.
//!
//! A long import is mostly chains of single-predecessor entries, so after the first entry of a
//! chain every cover is known. Positions of several entries fall back to the index query.

use std::rc::Rc;

use super::{Dag, DagError, DagStore, MetaFilter};
use crate::entry::{Meta, Position};
use crate::hash::EntryHash;

use crate::FastMap as HashMap;

/// Covers by tag key, then tag value (as in [`MetaFilter::tag`]): nested, so that a lookup by
/// borrowed strings allocates nothing.
type TagCovers = HashMap<String, HashMap<String, Position>>;

/// Covers already known at single-entry positions, by entry and tag. An entry without tags
/// of its own shares its predecessor's covers (an import of 100k data entries keeps one map,
/// not 100k copies of it).
#[derive(Default, Debug)]
pub struct CoverCache {
    at: HashMap<EntryHash, Rc<TagCovers>>,
    /// Covers answered from the cache, and by the index (for reports and tests).
    pub hits: u64,
    pub misses: u64,
}

fn has_tag(meta: &Meta, key: &str, value: &str) -> bool {
    meta.get(key).is_some_and(|values| values.contains(value))
}

impl CoverCache {
    pub fn new() -> CoverCache {
        CoverCache::default()
    }

    /// The latest entries at or before `position` tagged `key=value`, as
    /// `dag.cover_with_filter(position, &MetaFilter::tag(key, value), None)` would answer.
    pub fn cover<S: DagStore>(
        &mut self,
        dag: &Dag<S>,
        position: &Position,
        key: &str,
        value: &str,
    ) -> Result<Position, DagError> {
        let single = if position.len() == 1 { position.iter().next().copied() } else { None };
        if let Some(known) = single.and_then(|h| self.at.get(&h)).and_then(|m| m.get(key)).and_then(|m| m.get(value)) {
            self.hits += 1;
            return Ok(known.clone());
        }
        self.misses += 1;
        let cover = dag.cover_with_filter(position, &MetaFilter::tag(key, value), None)?;
        if let Some(h) = single {
            Rc::make_mut(self.at.entry(h).or_default())
                .entry(key.to_string())
                .or_default()
                .insert(value.to_string(), cover.clone());
        }
        Ok(cover)
    }

    /// Records that entry `hash` (with predecessors `prev` and tags `meta`) was appended, so the
    /// covers at `{hash}` follow from those at its predecessor.
    pub fn appended(&mut self, hash: EntryHash, prev: &Position, meta: &Meta) {
        let before = if prev.len() == 1 { prev.iter().next().and_then(|p| self.at.get(p)).cloned() } else { None };
        if meta.is_empty() {
            if let Some(before) = before {
                self.at.insert(hash, before);
            }
            return;
        }
        let mut mine: TagCovers = HashMap::default();
        if let Some(before) = before {
            for (key, by_value) in before.iter() {
                for (value, cover) in by_value {
                    if !has_tag(meta, key, value) {
                        mine.entry(key.clone()).or_default().insert(value.clone(), cover.clone());
                    }
                }
            }
        }
        for (key, values) in meta {
            for value in values {
                mine.entry(key.clone()).or_default().insert(value.clone(), [hash].into_iter().collect());
            }
        }
        if !mine.is_empty() {
            self.at.insert(hash, Rc::new(mine));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::meta;
    use crate::{HashAlgorithm, MemStore};
    use serde_json::json;

    /// Chains, merges and tags in a fixed shape; every cached cover equals the index's answer.
    #[test]
    fn cached_covers_equal_the_index() {
        let mut dag = Dag::new(MemStore::new(), HashAlgorithm::Blake3);
        let mut cache = CoverCache::new();
        let mut heads: Vec<EntryHash> = Vec::new();
        let tags = ["a", "b", ""];
        for i in 0..300u32 {
            // Mostly extend the last entry; sometimes branch from an older one or merge two.
            let prev: Position = match (i, i % 17, i % 5) {
                (0, _, _) => Position::new(),
                (_, 0, _) if heads.len() > 3 => [heads[heads.len() - 1], heads[heads.len() / 2]].into_iter().collect(),
                (_, _, 0) if heads.len() > 3 => [heads[heads.len() / 3]].into_iter().collect(),
                _ => [heads[heads.len() - 1]].into_iter().collect(),
            };
            let prev = dag.minimal_cover(&prev).expect("cover");
            for key in ["a", "b"] {
                let cached = cache.cover(&dag, &prev, "member", key).expect("cached");
                let direct = dag.cover_with_filter(&prev, &MetaFilter::tag("member", key), None).expect("direct");
                assert_eq!(cached, direct, "entry {i}, tag {key}");
            }
            let tag = tags[(i as usize * 7) % 3];
            let m = if tag.is_empty() { Meta::new() } else { meta([("member", vec![tag])]) };
            let app = dag.append(json!({ "n": i }), m.clone(), prev.clone()).expect("append");
            cache.appended(app.hash, &prev, &m);
            heads.push(app.hash);
        }
        assert!(cache.hits > cache.misses, "hits {} misses {}", cache.hits, cache.misses);
    }
}
