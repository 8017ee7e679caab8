//! What a backend keeps across statements, and forgetting it when a transaction or a
//! subtransaction aborts.
//!
//! A cache filled inside a (sub)transaction may hold what that (sub)transaction wrote: a group
//! it created, a member it added, an entry it stored, an identity it made. When it aborts
//! (`ROLLBACK`, `ROLLBACK TO SAVEPOINT`, an error caught by PL/pgSQL), what it wrote is gone
//! and so must be what was cached from it. Each cache tags what it keeps with the
//! subtransaction that kept it ([`ScopedMap`]) and subscribes here ([`subscribe`]); the
//! transaction callbacks call [`aborted`]. Subtransaction ids only grow within a transaction,
//! and every subtransaction begun after `s` is nested in `s` while `s` is open, so "kept at or
//! after `s`" is exactly "kept inside `s`".

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::Hash;

use pgrx::pg_sys;

/// When something was kept: the backend's local transaction number and the subtransaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kept {
    transaction: u32,
    sub: pg_sys::SubTransactionId,
}

/// Which work was undone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Undone {
    /// The whole transaction (everything kept is forgotten: simple, and aborts are rare).
    Transaction,
    /// A subtransaction and everything nested in it.
    Subtransaction(Kept),
}

impl Undone {
    /// Undone work: subtransaction `sub` of the current transaction.
    pub fn subtransaction(sub: pg_sys::SubTransactionId) -> Undone {
        Undone::Subtransaction(Kept { transaction: now().transaction, sub })
    }

    /// Whether something kept at `kept` was undone.
    pub fn covers(self, kept: Kept) -> bool {
        match self {
            Undone::Transaction => true,
            Undone::Subtransaction(s) => kept.transaction == s.transaction && kept.sub >= s.sub,
        }
    }
}

/// Where the backend is now.
pub fn now() -> Kept {
    // SAFETY: plain reads of the backend's own transaction state, on its thread; MyProc is set
    // for every backend and background worker connected to a database.
    unsafe {
        let transaction = if pg_sys::MyProc.is_null() { 0 } else { (*pg_sys::MyProc).lxid };
        Kept { transaction, sub: pg_sys::GetCurrentSubTransactionId() }
    }
}

thread_local! {
    static SUBSCRIBERS: RefCell<Vec<fn(Undone)>> = const { RefCell::new(Vec::new()) };
}

/// Registers a cache's forget function; called once per cache from `_PG_init`.
pub fn subscribe(forget: fn(Undone)) {
    SUBSCRIBERS.with(|s| {
        let mut s = s.borrow_mut();
        if !s.contains(&forget) {
            s.push(forget);
        }
    });
}

/// Tells every subscribed cache that work was undone.
pub fn aborted(undone: Undone) {
    let subscribers = SUBSCRIBERS.with(|s| s.borrow().clone());
    for forget in subscribers {
        forget(undone);
    }
}

/// A map whose entries remember the subtransaction they were kept in.
pub struct ScopedMap<K, V> {
    map: HashMap<K, (Kept, V)>,
}

impl<K, V> Default for ScopedMap<K, V> {
    fn default() -> Self {
        ScopedMap { map: HashMap::new() }
    }
}

impl<K: Eq + Hash, V> ScopedMap<K, V> {
    pub fn get<Q>(&self, k: &Q) -> Option<&V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.map.get(k).map(|(_, v)| v)
    }

    /// Keeps `v`, tagged with the current subtransaction.
    pub fn insert(&mut self, k: K, v: V) {
        self.map.insert(k, (now(), v));
    }

    /// Forgets everything (what it held was dropped by committed work).
    pub fn clear(&mut self) {
        self.map.clear();
    }

    /// Drops what the undone work kept.
    pub fn forget(&mut self, undone: Undone) {
        match undone {
            Undone::Transaction => self.map.clear(),
            Undone::Subtransaction(_) => self.map.retain(|_, (kept_in, _)| !undone.covers(*kept_in)),
        }
    }
}

#[cfg(test)]
mod unit {
    use super::{Kept, Undone};

    #[test]
    fn a_subtransaction_covers_what_was_kept_inside_it() {
        let at = |transaction, sub| Kept { transaction, sub };
        let undone = Undone::Subtransaction(at(5, 3));
        assert!(undone.covers(at(5, 3)));
        assert!(undone.covers(at(5, 7)));
        assert!(!undone.covers(at(5, 2)));
        // Kept in an earlier transaction, which committed.
        assert!(!undone.covers(at(4, 9)));
        assert!(Undone::Transaction.covers(at(4, 1)));
    }
}

/// Each cache after a subtransaction that filled it was rolled back (PL/pgSQL's EXCEPTION
/// block, as ROLLBACK TO SAVEPOINT does).
#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use crate::testing::{one, outcome};
    use pgrx::prelude::*;

    #[pg_test]
    fn a_group_created_in_an_undone_subtransaction_is_forgotten() {
        let undone = outcome(
            "PERFORM causal.create_group('g'); PERFORM * FROM causal.members('g'); \
             RAISE EXCEPTION 'undo %', (SELECT group_id FROM causal.group_defs WHERE name = 'g')",
        );
        let old = undone.strip_prefix("P0001 undo ").unwrap().to_string();
        assert!(!outcome("PERFORM * FROM causal.members('g')").starts_with("ok"));
        Spi::run("SELECT causal.create_group('g')").unwrap();
        assert_eq!(one("SELECT count(*)::text FROM causal.members('g')"), "1");
        assert!(!outcome(&format!("PERFORM * FROM causal.members('{old}')")).starts_with("ok"));
        assert!(Spi::get_one::<bool>("SELECT causal.verify('g')").unwrap().unwrap());
    }

    #[pg_test]
    fn an_identity_created_in_an_undone_subtransaction_is_forgotten() {
        let undone = outcome(
            "SET LOCAL causal.author = 'x'; PERFORM causal.create_identity('x'); \
             PERFORM causal.create_group('first'); RAISE EXCEPTION 'undo'",
        );
        assert_eq!(undone, "P0001 undo");
        let x = one("SELECT causal.create_identity('x')");
        Spi::run("SET LOCAL causal.author = 'x'; SELECT causal.create_group('second')").unwrap();
        // The group's admin is the identity that exists, not the one undone.
        assert_eq!(one("SELECT string_agg(key_id, ',') FROM causal.members('second')"), x);
    }

    #[pg_test]
    fn a_member_added_in_an_undone_subtransaction_is_forgotten() {
        Spi::run("SELECT causal.create_group('g')").unwrap();
        Spi::run("SELECT causal.create_identity('k2')").unwrap();
        let pk2 = one("SELECT public_key FROM causal.identities WHERE name = 'k2'");
        Spi::run("SELECT causal.create_identity('k3')").unwrap();
        let pk3 = one("SELECT public_key FROM causal.identities WHERE name = 'k3'");
        // k2, made an admin in undone work, acts as one there (its status is cached).
        let undone = outcome(&format!(
            "PERFORM causal.add_member('g', '{pk2}', NULL, true); SET LOCAL causal.author = 'k2'; \
             PERFORM causal.add_member('g', '{pk3}'); RAISE EXCEPTION 'undo'"
        ));
        assert_eq!(undone, "P0001 undo");
        // Other work reaches the same membership version; k2 is no member there.
        Spi::run(&format!("SELECT causal.add_member('g', '{pk3}')")).unwrap();
        let refused = outcome(&format!("SET LOCAL causal.author = 'k2'; PERFORM causal.add_member('g', '{pk2}')"));
        assert!(refused.starts_with("42501"), "{refused}");
        assert!(Spi::get_one::<bool>("SELECT causal.verify('g')").unwrap().unwrap());
    }

    #[pg_test]
    fn an_entry_stored_in_an_undone_subtransaction_is_forgotten() {
        Spi::run("SELECT causal.create_group('g')").unwrap();
        Spi::run("SELECT causal.create_identity('k2')").unwrap();
        let pk2 = one("SELECT public_key FROM causal.identities WHERE name = 'k2'");
        let add = format!("causal.add_member('g', '{pk2}', 'k2', true)");
        let undone = outcome(&format!("RAISE EXCEPTION 'undo %', {add}"));
        let hash = undone.strip_prefix("P0001 undo ").unwrap().to_string();
        // The same entry again (same predecessors, same signed payload): it must be stored,
        // not taken for one the cache still knows.
        assert_eq!(one(&format!("SELECT {add}")), hash);
        assert_eq!(one(&format!("SELECT count(*)::text FROM causal.log('g') WHERE hash = '{hash}'")), "1");
        assert!(one("SELECT string_agg(name, ',') FROM causal.identities JOIN causal.members('g') USING (key_id)")
            .contains("k2"));
        assert!(Spi::get_one::<bool>("SELECT causal.verify('g')").unwrap().unwrap());
    }

    #[pg_test]
    fn a_table_replicated_in_an_undone_subtransaction_is_not_captured() {
        crate::testing::shop_with_products();
        Spi::run("CREATE TABLE notes (id int PRIMARY KEY, body text)").unwrap();
        let undone = outcome(
            "PERFORM causal.replicate('shop', 'notes'); INSERT INTO notes VALUES (1, 'kept?'); \
             RAISE EXCEPTION 'undo'",
        );
        assert_eq!(undone, "P0001 undo");
        // The table is plain again: no trigger on it (which would check and lock as for a
        // replicated table), nothing in the catalog, and a write to it is an ordinary one.
        Spi::run("INSERT INTO notes VALUES (2, 'plain')").unwrap();
        assert_eq!(one("SELECT count(*)::text FROM pg_trigger WHERE tgrelid = 'notes'::regclass"), "0");
        assert_eq!(one("SELECT count(*)::text FROM causal.replicated_tables"), "1");
    }
}
