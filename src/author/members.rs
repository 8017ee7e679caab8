//! Membership: signed add/remove entries, and appending signed operations at the frontier.

use std::cell::RefCell;

use pgrx::prelude::*;

use causal_core::entry::{EncodedEntry, Entry, Meta, Position};
use causal_core::identity::random_seed;
use causal_core::identity::KeyId;
use causal_core::identity::PublicKey;
use causal_core::membership::derive_meta;
use causal_core::membership::{derive_meta_of, MemberStatus};
use causal_core::op_text::{sign_op_texts, unsigned_op_texts, OpText};
use causal_core::payload::Genesis;
use causal_core::payload::{Op, SignedPayload};
use causal_core::reconcile::OrderKey;
use causal_core::HashAlgorithm;
use causal_core::{EntryHash, GroupId};

use crate::catalog::group::Group;
use crate::catalog::identity::{current_author, Author};
use crate::error::{CausalError, OrReport};

/// Signs `ops` as the session's author and appends them as one entry after the group's
/// frontier. The author must be a live member (an admin when `admin_only`). The group row is
/// locked first, so concurrent appends to one group queue up and each one follows the last.
pub fn append_ops(group: &Group, ops: Vec<Op>, admin_only: bool) -> Result<EntryHash, CausalError> {
    append_ops_as(group, ops, admin_only, &current_author()?, false)
}

/// [`append_ops`] signed by `author`, whose use the caller has checked. With `defer_placing`,
/// the engine does not run now: the entry waits, with any other local commits, to be placed
/// in a batch ([`crate::replay::placement::catch_up`]).
pub fn append_ops_as(
    group: &Group,
    ops: Vec<Op>,
    admin_only: bool,
    author: &Author,
    defer_placing: bool,
) -> Result<EntryHash, CausalError> {
    let (mut dag, prev, group_id) = lock_for_append(group, Some(admin_only), author, defer_placing)?;
    // Serialized, hashed and signed once here; the store trusts these hashes. An entry placed
    // later (plain data) needs no decoded operations any more: they move into its value.
    let meta = derive_meta_of(None, &ops);
    let (value, canonical, payload) = if defer_placing {
        let (value, canonical) = SignedPayload::sign_into_value(&author.keypair, &group_id, ops, &prev)?;
        (value, canonical, None)
    } else {
        let encoded = SignedPayload::sign_encoded(&author.keypair, &group_id, ops, &prev)?;
        (encoded.value, encoded.canonical, Some(encoded.payload))
    };
    let entry = Entry::with_canonical_payload(dag.hash_algorithm(), value, &canonical, prev.clone(), meta);
    // Its predecessors are the whole frontier, read under the lock: it cannot be stored yet.
    dag.store().assume_absent(entry.hash);
    let hash = dag.insert_verified(entry)?.hash;
    if let Some(payload) = payload {
        crate::replay::placement::reconcile_local(group, dag, (hash, prev, payload))?;
    }
    crate::pg::notify::notify_changed(&group.id)?;
    Ok(hash)
}

/// A local commit of plain data, its operations already written as text: signed as `author`
/// and appended after the frontier, for the engine to place later, as [`append_ops_as`] does
/// with `defer_placing`. `meta` is the entry's metadata, derived from its operations. The
/// sealer appends every decoded transaction so: its author was checked when it wrote (a
/// membership that ended since is the engine's to judge, which cancels the entry), and no
/// history may stop sealing.
pub fn append_sealed(group: &Group, ops: Vec<OpText>, meta: Meta, author: &Author) -> Result<(), CausalError> {
    let mut appender = SealAppender::default();
    appender.append(group, ops, meta, author)?;
    appender.finish()
}

/// An entry a [`SealAppender`] has not written yet: whether it is signed depends on the next.
struct OpenEntry {
    ops: Vec<OpText>,
    meta: Meta,
    author: Author,
    prev: Position,
}

/// One group's sealing state in a [`SealAppender`].
struct SealingGroup {
    group: Group,
    dag: causal_core::Dag<crate::catalog::store::SpiStore>,
    id: GroupId,
    open: Option<OpenEntry>,
    /// Unsigned entries of the open entry's author written just before it, in a row.
    unsigned_run: usize,
}

/// Appends sealed local commits, many at a time: each group is locked once, its running
/// state stays in memory and its entry rows are written together at [`SealAppender::finish`].
/// Before, every sealed transaction updated the group's row again, inside one transaction,
/// and each lookup of that row walked all of its versions: sealing slowed quadratically.
///
/// **One signature per run.** As Hypercore signs a batch once, an entry whose next entry in
/// the group is by the same author goes unsigned: that entry's signature covers it
/// ([`causal_core::signature_cover`]). Every author's last entry of a run is signed, and so
/// is at least every `MAX_UNSIGNED_RUN + 1`-th. All of a run's entries commit together, so
/// no unsigned entry is ever stored without its cover. (Signing was about three quarters of
/// the sealer's time per single-row transaction.)
#[derive(Default)]
pub struct SealAppender {
    groups: Vec<SealingGroup>,
}

impl SealAppender {
    /// [`append_sealed`] into this batch.
    pub fn append(&mut self, group: &Group, ops: Vec<OpText>, meta: Meta, author: &Author) -> Result<(), CausalError> {
        let at = match self.groups.iter().position(|g| g.group.id == group.id) {
            Some(i) => i,
            None => {
                let (dag, _, id) = lock_for_append(group, None, author, true)?;
                dag.store().defer_state_writes();
                self.groups.push(SealingGroup { group: group.clone(), dag, id, open: None, unsigned_run: 0 });
                self.groups.len() - 1
            }
        };
        let g = &mut self.groups[at];
        let same_author = g.open.as_ref().is_some_and(|o| o.author.keypair.public() == author.keypair.public());
        let sign = !same_author || g.unsigned_run >= causal_core::signature_cover::MAX_UNSIGNED_RUN;
        g.close_open(sign)?;
        g.unsigned_run = if sign { 0 } else { g.unsigned_run + 1 };
        let prev = g.dag.frontier()?;
        g.open = Some(OpenEntry { ops, meta, author: author.clone(), prev });
        Ok(())
    }

    /// Writes the entries (each group's last one signed) and each group's state, and wakes
    /// the sync worker.
    pub fn finish(self) -> Result<(), CausalError> {
        for mut g in self.groups {
            g.close_open(true)?;
            g.dag.store().write_state().map_err(causal_core::DagError::from)?;
            crate::pg::notify::notify_changed(&g.group.id)?;
        }
        Ok(())
    }
}

impl SealingGroup {
    /// Appends the open entry, if any: signed, or unsigned for the next entry to cover.
    fn close_open(&mut self, sign: bool) -> Result<(), CausalError> {
        let Some(OpenEntry { ops, meta, author, prev }) = self.open.take() else { return Ok(()) };
        let payload = if sign {
            sign_op_texts(&author.keypair, &self.id, &ops, &prev)?
        } else {
            unsigned_op_texts(&author.keypair.public().key_id(), &ops)?
        };
        let entry = EncodedEntry::new(self.dag.hash_algorithm(), &payload.canonical, payload.stored, prev, meta);
        self.dag.store().assume_absent(entry.hash);
        self.dag.insert_encoded(entry)?;
        Ok(())
    }
}

/// Fails unless the identity `key_id` is a live member of the group `group_id` at its
/// frontier: the capture trigger's check at a transaction's first write to a group.
pub fn check_writer(group_id: &str, key_id: &str) -> Result<(), CausalError> {
    let group = Group::find(group_id)?;
    let key: KeyId = key_id.parse().map_err(|e| CausalError::Corrupt(format!("key id {key_id}: {e}")))?;
    let dag = group.dag();
    let version = crate::catalog::authority_version::current(group.num)?;
    let status = cached_status(&group, &dag, None, &key, version)?;
    if !status.live {
        return Err(CausalError::NotAllowed { key_id: key.to_b64(), needs: "a member", group: group.id.clone() });
    }
    Ok(())
}

/// A hook of the capture layer, with a group's id.
type GroupHook = fn(&str) -> Result<(), CausalError>;

thread_local! {
    /// What runs before an administrative append, with the group's id: the capture layer
    /// (above this one) registers its sealing under the group's exclusive lock here
    /// ([`register_capture`]), so the entry follows every committed local transaction.
    static BEFORE_ADMIN_APPEND: std::cell::Cell<GroupHook> =
        const { std::cell::Cell::new(|_| Ok(())) };
}

thread_local! {
    /// What runs before a group is created: the capture layer creates its slot there, if it
    /// can ([`register_capture`]).
    static BEFORE_CREATE_GROUP: std::cell::Cell<fn() -> Result<(), CausalError>> =
        const { std::cell::Cell::new(|| Ok(())) };
}

/// Registers the capture layer's part in appends (called from `_PG_init`): what runs before
/// each administrative append, and before a group is created.
pub fn register_capture(
    before_admin_append: fn(&str) -> Result<(), CausalError>,
    before_create_group: fn() -> Result<(), CausalError>,
) {
    BEFORE_ADMIN_APPEND.with(|c| c.set(before_admin_append));
    BEFORE_CREATE_GROUP.with(|c| c.set(before_create_group));
}

/// Locks the group for an append by `author` and returns its DAG, the frontier the entry
/// follows and the group's id. `needs` is what the author must be: a live member
/// (`Some(false)`), an admin (`Some(true)`), or nothing checked (`None`). Unless
/// `defer_placing`, the entry is an administrative one placed now: the group's lock is taken
/// exclusively first (sealing what is committed and waiting for the writers in flight), and
/// a long backlog of unplaced local commits is placed.
fn lock_for_append(
    group: &Group,
    needs: Option<bool>,
    author: &Author,
    defer_placing: bool,
) -> Result<(causal_core::Dag<crate::catalog::store::SpiStore>, causal_core::Position, GroupId), CausalError> {
    if !defer_placing {
        BEFORE_ADMIN_APPEND.with(|f| f.get())(&group.id)?;
    }
    let mut dag = group.dag();
    let state = dag.store().lock().map_err(causal_core::DagError::from)?;
    if !defer_placing {
        dag = crate::replay::placement::place_long_backlog(group, dag)?;
    }
    let prev = dag.frontier()?;
    if let Some(admin_only) = needs {
        let key_id = author.keypair.public().key_id();
        let status = cached_status(group, &dag, Some(&prev), &key_id, state.authority_version)?;
        if !status.live || (admin_only && !status.admin) {
            return Err(CausalError::NotAllowed {
                key_id: key_id.to_b64(),
                needs: if admin_only { "an admin" } else { "a member" },
                group: group.id.clone(),
            });
        }
    }
    let group_id: GroupId = group.id.parse().map_err(|e| CausalError::Corrupt(format!("group id: {e}")))?;
    Ok((dag, prev, group_id))
}

thread_local! {
    /// Member status by (group, key), valid while the group's membership version is unchanged:
    /// at the frontier, status depends only on the membership entries.
    static STATUS: RefCell<crate::pg::xact::ScopedMap<(String, KeyId), (u32, MemberStatus)>> = RefCell::default();
}

/// Forgets the statuses found in undone work: its membership changes are gone, and the
/// version they were found at will be reached again by other changes.
pub fn forget(undone: crate::pg::xact::Undone) {
    STATUS.with(|s| s.borrow_mut().forget(undone));
}

/// The member status of `key` at the frontier (`frontier`, or read when `None`), as of the
/// group's authority version `version`.
fn cached_status(
    group: &Group,
    dag: &causal_core::Dag<crate::catalog::store::SpiStore>,
    frontier: Option<&causal_core::Position>,
    key: &KeyId,
    version: u32,
) -> Result<MemberStatus, CausalError> {
    let k = (group.id.clone(), *key);
    if let Some((v, s)) = STATUS.with(|c| c.borrow().get(&k).cloned()) {
        if v == version {
            return Ok(s);
        }
    }
    let read;
    let frontier = match frontier {
        Some(f) => f,
        None => {
            read = dag.frontier()?;
            &read
        }
    };
    let status = status_in_view(group, dag, frontier, key)?;
    STATUS.with(|c| c.borrow_mut().insert(k, (version, status.clone())));
    Ok(status)
}

/// The group's authority entries (genesis, membership, schema, rules) with their order keys:
/// the journal's, or computed for entries not placed yet.
pub fn authority_input(group: &Group) -> Result<Vec<(OrderKey, SignedPayload)>, CausalError> {
    use causal_core::reconcile::ReplicaStore;
    let replica = crate::replay::SpiReplica::new(group);
    let rerr = |e: causal_core::reconcile::ReconcileError| CausalError::Reconcile(e.to_string());
    let hashes = replica.authority_entries().map_err(rerr)?;
    let heights = causal_core::reconcile::membership_view::heights(replica.dag(), &hashes, &mut |h| {
        Ok(replica.order(h)?.map(|o| o.height))
    })
    .map_err(rerr)?;
    let mut out = Vec::with_capacity(hashes.len());
    for h in hashes {
        let height = heights.get(&h).copied().ok_or_else(|| CausalError::Corrupt(format!("no height for {h}")))?;
        out.push((OrderKey { height, hash: h }, replica.payload(&h).map_err(rerr)?));
    }
    Ok(out)
}

/// The status of `key` at `position` seen from there, with membership verdicts: a removal
/// that the group's reconciliation cancelled removes no one
/// (`causal_core::reconcile::membership_view`).
pub fn status_in_view(
    group: &Group,
    dag: &causal_core::Dag<crate::catalog::store::SpiStore>,
    position: &causal_core::Position,
    key: &KeyId,
) -> Result<MemberStatus, CausalError> {
    let input = authority_input(group)?;
    causal_core::reconcile::membership_view::member_in_view(dag, &input, position, key)
        .map_err(|e| CausalError::Reconcile(e.to_string()))
}

fn status_of(group: &Group, key_id: &KeyId) -> Result<MemberStatus, CausalError> {
    let dag = group.dag();
    let frontier = dag.frontier()?;
    status_in_view(group, &dag, &frontier, key_id)
}

/// Adds a member (or changes its admin flag). `public_key` is the serialized public key in
/// Base64, as `causal.identities` shows it. Signed by an admin; returns the entry's hash.
#[pg_extern]
fn add_member(
    grp: &str,
    public_key: &str,
    name: default!(Option<&str>, "NULL"),
    admin: default!(bool, false),
) -> String {
    let f = "causal.add_member";
    let group = Group::find(grp).or_report(f);
    let key = PublicKey::from_b64(public_key).map_err(CausalError::BadPublicKey).or_report(f);
    let op = Op::AddMember { public_key: key, name: name.map(str::to_string), admin };
    append_ops(&group, vec![op], true).or_report(f).to_b64()
}

/// Removes a member, by key id. Signed by an admin; returns the entry's hash.
#[pg_extern]
fn remove_member(grp: &str, key_id: &str) -> String {
    let f = "causal.remove_member";
    let group = Group::find(grp).or_report(f);
    let key: KeyId =
        key_id.parse().map_err(|_| CausalError::NotAMember(key_id.chars().take(80).collect())).or_report(f);
    if !status_of(&group, &key).or_report(f).live {
        CausalError::NotAMember(key_id.to_string()).report(f);
    }
    append_ops(&group, vec![Op::RemoveMember { key_id: key }], true).or_report(f).to_b64()
}

/// The group's live members at its frontier.
#[pg_extern(stable)]
fn members(
    grp: &str,
) -> TableIterator<'static, (name!(key_id, String), name!(admin, bool), name!(public_key, Option<String>))> {
    let f = "causal.members";
    let group = Group::find(grp).or_report(f);
    let keys = Spi::get_one_with_args::<Vec<String>>(
        "SELECT coalesce(array_agg(DISTINCT substr(tag, 8)), '{}') FROM causal.dag_entry_tags \
         WHERE grp = $1 AND tag LIKE 'member=%'",
        &[group.num.into()],
    )
    .map_err(CausalError::from)
    .or_report(f)
    .unwrap_or_default();
    // The group's authority entries are read once, for every key.
    let dag = group.dag();
    let frontier = dag.frontier().map_err(CausalError::from).or_report(f);
    let input = authority_input(&group).or_report(f);
    let mut rows = Vec::new();
    for k in keys {
        let Ok(key) = k.parse::<KeyId>() else { continue };
        let s = causal_core::reconcile::membership_view::member_in_view(&dag, &input, &frontier, &key)
            .map_err(|e| CausalError::Reconcile(e.to_string()))
            .or_report(f);
        if s.live {
            rows.push((k, s.admin, s.public_key.map(|p| p.to_b64())));
        }
    }
    rows.sort();
    TableIterator::new(rows)
}

fn create(name: &str, hash_algorithm: &str) -> Result<String, CausalError> {
    let algorithm = HashAlgorithm::parse(hash_algorithm)?;
    // The slot that will capture the group's writes, while this transaction may create it.
    BEFORE_CREATE_GROUP.with(|f| f.get())()?;
    if name.trim() != name || name.is_empty() || name.len() > 63 {
        return Err(CausalError::InvalidName { what: "group", name: name.chars().take(80).collect() });
    }
    if crate::pg::spi::get_opt::<bool>("SELECT true FROM causal.group_defs WHERE name = $1", &[name.into()])?.is_some()
    {
        return Err(CausalError::DuplicateGroup(name.to_string()));
    }
    let author = current_author()?;
    let genesis = Genesis {
        name: name.to_string(),
        hash_algorithm: algorithm.name().to_string(),
        seed: random_seed(),
        admin: author.keypair.public(),
    };
    let payload = SignedPayload::sign_genesis(&author.keypair, genesis)?;
    let entry = Entry::new(algorithm, payload.to_value(), Position::new(), derive_meta(&payload))?;
    let id = entry.hash.to_b64();
    let num = crate::catalog::group::insert_group(&id, name, algorithm)?;
    let hash = entry.hash;
    let group = Group { id: id.clone(), num, algorithm };
    let mut dag = group.dag();
    dag.insert(entry)?;
    crate::replay::placement::reconcile_local(&group, dag, (hash, Position::new(), payload))?;
    Ok(id)
}

/// Creates a replication group and returns its id (the hash of its genesis entry). The
/// genesis is signed by the session's author, who becomes the group's first admin.
#[pg_extern]
fn create_group(name: &str, hash_algorithm: default!(&str, "'blake3'")) -> String {
    create(name, hash_algorithm).or_report("causal.create_group")
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use crate::testing::one;
    use pgrx::prelude::*;

    #[pg_test]
    fn admins_add_and_remove_members() {
        Spi::run("SELECT causal.create_group('shop')").unwrap();
        let node = one("SELECT causal.node_id()");
        let bob = one("SELECT causal.create_identity('bob')");
        let bob_pk = one("SELECT public_key FROM causal.identities WHERE name = 'bob'");
        assert_eq!(
            one("SELECT string_agg(key_id || ':' || admin, ',') FROM causal.members('shop')"),
            format!("{node}:true")
        );
        Spi::run(&format!("SELECT causal.add_member('shop', '{bob_pk}', 'bob')")).unwrap();
        let n = Spi::get_one::<i64>("SELECT count(*) FROM causal.members('shop')").unwrap().unwrap();
        assert_eq!(n, 2);
        // bob is a member but not an admin: he may not add members.
        Spi::run("SELECT causal.create_identity('carol')").unwrap();
        let carol_pk = one("SELECT public_key FROM causal.identities WHERE name = 'carol'");
        Spi::run(&format!(
            "DO $$ BEGIN SET LOCAL causal.author = 'bob'; PERFORM causal.add_member('shop', '{carol_pk}'); \
                      EXCEPTION WHEN insufficient_privilege THEN PERFORM set_config('t.s', 'denied', false); END $$"
        ))
        .unwrap();
        assert_eq!(one("SELECT current_setting('t.s')"), "denied");
        Spi::run(&format!("SELECT causal.remove_member('shop', '{bob}')")).unwrap();
        assert_eq!(Spi::get_one::<i64>("SELECT count(*) FROM causal.members('shop')").unwrap().unwrap(), 1);
        // Three entries: genesis, add, remove (the refused add left nothing).
        assert_eq!(Spi::get_one::<i64>("SELECT entry_count FROM causal.groups").unwrap().unwrap(), 3);
        assert_eq!(Spi::get_one::<i64>("SELECT cardinality(frontier)::bigint FROM causal.groups").unwrap().unwrap(), 1);
    }

    #[pg_test(error = "invalid public key: not valid Base64: Invalid symbol 33, offset 0.")]
    fn bad_public_keys_are_refused() {
        Spi::run("SELECT causal.create_group('shop')").unwrap();
        Spi::run("SELECT causal.add_member('shop', '!!!')").unwrap();
    }

    #[pg_test(error = "key \"AAAA\" is not a live member of the group")]
    fn removing_a_non_member_is_refused() {
        Spi::run("SELECT causal.create_group('shop')").unwrap();
        Spi::run("SELECT causal.remove_member('shop', 'AAAA')").unwrap();
    }
}
