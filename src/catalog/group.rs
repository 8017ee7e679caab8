//! Replication groups: one DAG each, created with a signed genesis entry.

use pgrx::prelude::*;

use causal_core::{Dag, HashAlgorithm};

use crate::catalog::store::SpiStore;
use crate::error::{CausalError, OrReport};
use crate::pg::spi::run_prepared;

thread_local! {
    /// Groups found, by the name or id they were asked for (a group's id and algorithm never
    /// change); forgotten when a transaction aborts, in case it created the group.
    static FOUND: std::cell::RefCell<crate::pg::xact::ScopedMap<String, Group>> = Default::default();
}

/// Forgets the groups found in undone work, which may have created them.
pub fn forget(undone: crate::pg::xact::Undone) {
    FOUND.with(|f| f.borrow_mut().forget(undone));
}

/// Forgets every group found: one was removed from this database (`causal.leave_group`, in
/// this backend or, through the catalog's relcache invalidation, another).
pub fn clear_cache() {
    FOUND.with(|f| f.borrow_mut().clear());
}

/// A group of this database.
#[derive(Clone)]
pub struct Group {
    pub id: String,
    /// The group's number in this database (`group_defs.grp`), which the per-entry and
    /// per-row catalog tables use in place of the id.
    pub num: i32,
    pub algorithm: HashAlgorithm,
}

impl Group {
    /// Finds a group by name or by id.
    pub fn find(name_or_id: &str) -> Result<Group, CausalError> {
        if let Some(g) = FOUND.with(|f| f.borrow().get(name_or_id).cloned()) {
            return Ok(g);
        }
        let row = run_prepared(
            "SELECT group_id, hash_algorithm, grp FROM causal.group_defs WHERE name = $1 OR group_id = $1",
            &[name_or_id.into()],
            false,
            |mut rows| match rows.next() {
                None => Ok(None),
                Some(r) => Ok(Some((r.get::<String>(1)?, r.get::<String>(2)?, r.get::<i32>(3)?))),
            },
        )?;
        let Some((Some(id), Some(alg), Some(num))) = row else {
            return Err(CausalError::UnknownGroup(name_or_id.chars().take(80).collect()));
        };
        let algorithm = HashAlgorithm::parse(&alg).map_err(|e| CausalError::Corrupt(e.to_string()))?;
        let group = Group { id, num, algorithm };
        FOUND.with(|f| f.borrow_mut().insert(name_or_id.to_string(), group.clone()));
        Ok(group)
    }

    pub fn dag(&self) -> Dag<SpiStore> {
        Dag::new(SpiStore::new(&self.id, self.num), self.algorithm)
    }
}

/// Adds a group's row and returns the number it got.
pub fn insert_group(id: &str, name: &str, algorithm: HashAlgorithm) -> Result<i32, CausalError> {
    run_prepared(
        "INSERT INTO causal.group_defs (group_id, name, hash_algorithm) VALUES ($1, $2, $3) RETURNING grp",
        &[id.into(), name.into(), algorithm.name().into()],
        true,
        |mut rows| match rows.next() {
            Some(r) => r.get::<i32>(1),
            None => Ok(None),
        },
    )?
    .ok_or_else(|| CausalError::Corrupt(format!("group {id} got no number")))
}

/// The group's frontier: the hashes of the entries no other entry follows, sorted.
#[pg_extern(stable)]
fn frontier(grp: &str) -> Vec<String> {
    let group = Group::find(grp).or_report("causal.frontier");
    let frontier = group.dag().frontier().map_err(CausalError::from).or_report("causal.frontier");
    let mut out: Vec<String> = frontier.iter().map(|h| h.to_b64()).collect();
    out.sort();
    out
}

extension_sql!(
    r#"
CREATE VIEW causal.groups AS
SELECT g.name,
       g.group_id,
       g.hash_algorithm,
       coalesce((SELECT array_agg(t.table_name ORDER BY t.table_name) FROM causal.replicated_tables t
                 WHERE t.group_id = g.group_id), '{}') AS tables,
       g.entry_count::bigint AS entry_count,
       causal.frontier(g.group_id) AS frontier,
       (g.entry_count - g.reconciled_count)::bigint AS unplaced
FROM causal.group_defs g;
GRANT SELECT ON causal.groups TO PUBLIC;
"#,
    name = "groups_view",
    requires = [frontier]
);

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn create_group_writes_a_signed_genesis() {
        let id = Spi::get_one::<String>("SELECT causal.create_group('shop')").unwrap().unwrap();
        let (name, alg, count) = Spi::get_three::<String, String, i64>(
            "SELECT name, hash_algorithm, entry_count FROM causal.groups WHERE group_id = (SELECT group_id FROM causal.group_defs)",
        )
        .unwrap();
        assert_eq!((name.unwrap(), alg.unwrap(), count.unwrap()), ("shop".to_string(), "blake3".to_string(), 1));
        let frontier = Spi::get_one::<Vec<String>>("SELECT causal.frontier('shop')").unwrap().unwrap();
        assert_eq!(frontier, vec![id.clone()]);

        // The stored genesis verifies: its hash, its signature, and its admin is the node.
        let payload = Spi::get_one::<String>("SELECT payload FROM causal.entries").unwrap().unwrap();
        let value = causal_core::json::parse(&payload).unwrap();
        let entry = causal_core::Entry::new(
            causal_core::HashAlgorithm::Blake3,
            value.clone(),
            Default::default(),
            Default::default(),
        )
        .unwrap();
        assert_eq!(entry.hash.to_b64(), id);
        let p = causal_core::payload::SignedPayload::from_value(&value).unwrap();
        let genesis = p.genesis.clone().unwrap();
        assert_eq!(genesis.name, "shop");
        p.verify(&genesis.admin, None, &Default::default()).unwrap();
        let node = Spi::get_one::<String>("SELECT causal.node_id()").unwrap().unwrap();
        assert_eq!(genesis.admin.key_id().to_b64(), node);
    }

    #[pg_test]
    fn sha256_groups_and_two_groups_differ() {
        let a = Spi::get_one::<String>("SELECT causal.create_group('a', 'sha-256')").unwrap().unwrap();
        let b = Spi::get_one::<String>("SELECT causal.create_group('b', 'sha-256')").unwrap().unwrap();
        assert_ne!(a, b);
        let algs = Spi::get_one::<Vec<String>>("SELECT array_agg(hash_algorithm) FROM causal.groups").unwrap().unwrap();
        assert_eq!(algs, vec!["sha-256", "sha-256"]);
    }

    #[pg_test(error = "group \"shop\" already exists")]
    fn duplicate_group_names_are_refused() {
        Spi::run("SELECT causal.create_group('shop')").unwrap();
        Spi::run("SELECT causal.create_group('shop')").unwrap();
    }

    #[pg_test(error = "unknown hash algorithm \"md5\": the supported algorithms are \"blake3\" and \"sha-256\"")]
    fn unknown_algorithms_are_refused() {
        Spi::run("SELECT causal.create_group('shop', 'md5')").unwrap();
    }

    #[pg_test(error = "unknown group \"nope\"")]
    fn unknown_groups_are_reported() {
        Spi::run("SELECT causal.frontier('nope')").unwrap();
    }
}
