//! Errors at the SQL boundary. Every failure a user can cause is a `CausalError`, reported
//! with a SQLSTATE that fits it, a message that names the object, and a hint where one helps.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

use causal_core::hash::UnknownAlgorithm;
use causal_core::json::JsonError;

const SUPPORTED_TYPES_HINT: &str = concat!(
    "Supported types: text, varchar(n), smallint, integer, bigint, numeric(p,s), double precision, real, ",
    "boolean, date, timestamp, timestamptz, uuid, bytea, jsonb."
);

#[derive(Debug, thiserror::Error)]
pub enum CausalError {
    #[error(transparent)]
    UnknownAlgorithm(#[from] UnknownAlgorithm),
    #[error("value has no canonical form: {0}")]
    NotALiteral(#[from] JsonError),
    #[error("invalid {what} name {name:?}")]
    InvalidName { what: &'static str, name: String },
    #[error("identity \"{0}\" already exists")]
    DuplicateIdentity(String),
    #[error("unknown identity \"{0}\"")]
    UnknownIdentity(String),
    #[error("role \"{0}\" does not exist")]
    UnknownRole(String),
    #[error("role \"{role}\" may not author as identity \"{identity}\"")]
    IdentityNotGranted { identity: String, role: String },
    #[error("group \"{0}\" already exists")]
    DuplicateGroup(String),
    #[error("unknown group \"{0}\"")]
    UnknownGroup(String),
    #[error(transparent)]
    Dag(#[from] causal_core::DagError),
    #[error("invalid public key: {0}")]
    BadPublicKey(causal_core::identity::IdentityError),
    #[error("key \"{0}\" is not a live member of the group")]
    NotAMember(String),
    #[error("identity {key_id} is not {needs} of group {group}")]
    NotAllowed { key_id: String, needs: &'static str, group: String },
    #[error(transparent)]
    Payload(#[from] causal_core::payload::PayloadError),
    #[error("table {table} cannot be replicated: {what}")]
    Unsupported { table: String, what: String },
    #[error("column {column} of table {table} has type {type_name}, which pg_causal does not replicate")]
    UnsupportedType { table: String, column: String, type_name: String },
    #[error("CHECK constraint {constraint} of table {table} is not deterministic: {expression} calls a function that is not immutable")]
    MutableCheck { table: String, constraint: String, expression: String },
    #[error("table {table} cannot be replicated: its foreign key {constraint} references {references}, which is not replicated in the same group")]
    ForeignKeyOutsideGroup { table: String, constraint: String, references: String },
    #[error("table {table} cannot be replicated: {what}")]
    UnsafeSchema { table: String, what: String },
    #[error("table {0} exists here, outside the group; pg_causal does not take over an existing table")]
    TableExists(String),
    #[error("table {0} has no primary key; pg_causal identifies rows by their primary key")]
    NoPrimaryKey(String),
    #[error("table {table} is already replicated in group {group}")]
    AlreadyReplicated { table: String, group: String },
    #[error("table {0} is not replicated")]
    NotReplicated(String),
    #[error("invalid rule for {table}: {error}")]
    BadRule { table: String, error: causal_core::rules::RuleError },
    #[error("malformed bundle: {0}")]
    BadBundle(String),
    #[error("ALTER TABLE of replicated table {table} is not supported: {what}")]
    UnsupportedAlter { table: String, what: String },
    #[error("table {table} cannot be unreplicated while {referrer} references it")]
    StillReferenced { table: String, referrer: String },
    #[error("{operation} into {table} is not allowed by its rule: {rule}")]
    RuleDenied { table: String, operation: &'static str, rule: String },
    #[error("unknown operation {0:?}: use insert, update, delete or all")]
    BadOperation(String),
    #[error("TRUNCATE of replicated table {0} is not allowed")]
    Truncate(String),
    #[error("PREPARE TRANSACTION is not supported for transactions that write replicated tables")]
    Prepare,
    #[error("table {0} of a group cannot be written while pg_causal places history (in a cancellation hook, say)")]
    WriteWhilePlacing(String),
    #[error("cancellation hook {hook}: {why}")]
    BadHook { hook: String, why: &'static str },
    #[error("this transaction has already written replicated tables of group {group}, so it cannot {action}")]
    WritesFirst { group: String, action: &'static str },
    #[error("pg_causal captures writes from the WAL, which needs wal_level = logical (it is {0})")]
    WalLevel(String),
    #[error("pg_causal's capture slot {0} does not exist yet, and this transaction has already written, so it cannot create it")]
    NoCaptureSlot(String),
    #[error(
        "pg_causal's capture slot {0} is missing (this node was promoted from a standby, or the slot was dropped); \
         writes to replicated tables wait until it is created again and what was committed without it is sealed"
    )]
    CaptureSlotLost(String),
    #[error("pg_causal's catalog is inconsistent: {0}")]
    Corrupt(String),
    #[error("the transaction would be cancelled in its group: {0}")]
    Cancelled(String),
    #[error("reconciliation failed: {0}")]
    Reconcile(String),
    #[error("invalid peer address \"{address}\": {why}")]
    BadAddress { address: String, why: String },
    #[error("invalid group id \"{0}\": a group id is the Base64 hash of the group's genesis entry")]
    BadGroupId(String),
    #[error("invalid value for {parameter}: {why}")]
    BadArgument { parameter: &'static str, why: String },
    #[error("{0} is the sync worker's: only a superuser or the owner of pg_causal may call it")]
    WorkerOnly(&'static str),
    #[error("{0}")]
    BadHandoff(#[from] causal_core::handoff::HandoffError),
    #[error("SPI error: {0}")]
    Spi(#[from] pgrx::spi::Error),
}

/// Why a cancellation hook is refused (see [`CausalError::BadHook`]).
pub const HOOK_MISSING: &str = "no such function";
pub const HOOK_NOT_EXECUTABLE: &str = "the current role may not execute it";
pub const HOOK_SIGNATURE: &str = "it must take exactly one argument, of type jsonb";

impl CausalError {
    pub fn sqlstate(&self) -> PgSqlErrorCode {
        use PgSqlErrorCode::*;
        match self {
            CausalError::UnknownAlgorithm(_) | CausalError::NotALiteral(_) | CausalError::InvalidName { .. } => {
                ERRCODE_INVALID_PARAMETER_VALUE
            }
            CausalError::DuplicateIdentity(_) | CausalError::DuplicateGroup(_) => ERRCODE_DUPLICATE_OBJECT,
            CausalError::UnknownIdentity(_) | CausalError::UnknownRole(_) | CausalError::UnknownGroup(_) => {
                ERRCODE_UNDEFINED_OBJECT
            }
            CausalError::Dag(_) => ERRCODE_INTERNAL_ERROR,
            CausalError::BadPublicKey(_) | CausalError::Payload(_) => ERRCODE_INVALID_PARAMETER_VALUE,
            CausalError::NotAMember(_) => ERRCODE_UNDEFINED_OBJECT,
            CausalError::NotAllowed { .. } | CausalError::WorkerOnly(_) => ERRCODE_INSUFFICIENT_PRIVILEGE,
            CausalError::BadHandoff(_) => ERRCODE_INVALID_PARAMETER_VALUE,
            CausalError::Unsupported { .. }
            | CausalError::UnsupportedType { .. }
            | CausalError::MutableCheck { .. }
            | CausalError::UnsafeSchema { .. }
            | CausalError::ForeignKeyOutsideGroup { .. } => ERRCODE_FEATURE_NOT_SUPPORTED,
            CausalError::TableExists(_) => ERRCODE_DUPLICATE_TABLE,
            CausalError::NoPrimaryKey(_) => ERRCODE_INVALID_TABLE_DEFINITION,
            CausalError::Truncate(_) | CausalError::Prepare => ERRCODE_FEATURE_NOT_SUPPORTED,
            CausalError::WriteWhilePlacing(_) => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            CausalError::BadHook { why, .. } => match *why {
                HOOK_MISSING => ERRCODE_UNDEFINED_FUNCTION,
                HOOK_NOT_EXECUTABLE => ERRCODE_INSUFFICIENT_PRIVILEGE,
                _ => ERRCODE_INVALID_FUNCTION_DEFINITION,
            },
            CausalError::WalLevel(_) => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            CausalError::NoCaptureSlot(_) => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            CausalError::CaptureSlotLost(_) => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            CausalError::BadRule { error, .. } => rule_sqlstate(error),
            CausalError::BadOperation(_) => ERRCODE_INVALID_PARAMETER_VALUE,
            CausalError::RuleDenied { .. } => ERRCODE_INSUFFICIENT_PRIVILEGE,
            CausalError::UnsupportedAlter { .. } => ERRCODE_FEATURE_NOT_SUPPORTED,
            CausalError::BadBundle(_) => ERRCODE_INVALID_PARAMETER_VALUE,
            CausalError::StillReferenced { .. } => ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST,
            CausalError::AlreadyReplicated { .. } => ERRCODE_DUPLICATE_OBJECT,
            CausalError::NotReplicated(_) => ERRCODE_UNDEFINED_OBJECT,
            CausalError::IdentityNotGranted { .. } => ERRCODE_INSUFFICIENT_PRIVILEGE,
            CausalError::WritesFirst { .. } => ERRCODE_INVALID_TRANSACTION_STATE,
            CausalError::Corrupt(_) => ERRCODE_DATA_CORRUPTED,
            CausalError::Cancelled(_) => ERRCODE_INTEGRITY_CONSTRAINT_VIOLATION,
            CausalError::Reconcile(_) => ERRCODE_INTERNAL_ERROR,
            CausalError::Spi(_) => ERRCODE_INTERNAL_ERROR,
            CausalError::BadAddress { .. } | CausalError::BadGroupId(_) => ERRCODE_INVALID_PARAMETER_VALUE,
            CausalError::BadArgument { .. } => ERRCODE_INVALID_PARAMETER_VALUE,
        }
    }

    pub fn hint(&self) -> Option<&'static str> {
        match self {
            CausalError::UnknownAlgorithm(_) => Some("Use 'blake3' or 'sha-256'."),
            CausalError::NotALiteral(JsonError::Null { .. }) => {
                Some("Canonical JSON has no null; leave the key out or use a string.")
            }
            CausalError::NotALiteral(JsonError::NonFinite { .. }) => {
                Some("Numbers are IEEE-754 doubles; write very large or precise values as strings.")
            }
            CausalError::NotALiteral(JsonError::Syntax(_)) => None,
            CausalError::InvalidName { .. } => Some("Names are 1 to 63 characters without leading or trailing spaces."),
            CausalError::UnknownIdentity(_) => Some("See causal.identities for the identities this database has."),
            CausalError::IdentityNotGranted { .. } => {
                Some("A superuser or the extension's owner can allow it with causal.grant_identity(identity, role).")
            }
            CausalError::DuplicateIdentity(_) | CausalError::UnknownRole(_) | CausalError::DuplicateGroup(_) => None,
            CausalError::UnknownGroup(_) => Some("See causal.groups for the groups this database has."),
            CausalError::Dag(_) | CausalError::Payload(_) => None,
            CausalError::BadPublicKey(_) => {
                Some("Pass the public_key column of causal.identities on the member's database.")
            }
            CausalError::NotAMember(_) => Some("See causal.members(group)."),
            CausalError::NotAllowed { .. } => {
                Some("Set causal.author to an identity that is an admin (for membership) or a member of the group.")
            }
            CausalError::UnsupportedType { .. } => Some(SUPPORTED_TYPES_HINT),
            CausalError::MutableCheck { .. } => {
                Some("Every replica re-evaluates CHECK constraints on merged rows, so they may only call immutable functions.")
            }
            CausalError::ForeignKeyOutsideGroup { .. } => Some("Replicate the referenced table in the same group first."),
            CausalError::UnsafeSchema { .. } => Some(
                "CHECK constraints and defaults are replicated as data in a small expression language: columns, constants, casts to replicated types, comparisons, arithmetic, AND/OR/NOT, IS NULL, IN lists, CASE, COALESCE and a list of immutable built-in functions; defaults may also use now(), CURRENT_TIMESTAMP, gen_random_uuid() and nextval(). See docs/SECURITY.md.",
            ),
            CausalError::TableExists(_) => Some(
                "Rename or drop the local table and import again; to put an existing table into a group, use causal.replicate on a node that is an admin.",
            ),
            CausalError::NoPrimaryKey(_) => Some("Add a PRIMARY KEY, then call causal.replicate again."),
            CausalError::Unsupported { .. } | CausalError::AlreadyReplicated { .. } => None,
            CausalError::NotReplicated(_) => Some("See causal.tables."),
            CausalError::Truncate(_) => {
                Some("TRUNCATE is not replicated; DELETE the rows instead, or causal.unreplicate the table first.")
            }
            CausalError::Prepare => Some("Commit the transaction directly."),
            CausalError::BadHook { .. } => {
                Some("A hook is a function of one jsonb argument, e.g. CREATE FUNCTION app.on_cancel(r jsonb) RETURNS void ...")
            }
            CausalError::WriteWhilePlacing(_) => Some(
                "Its changes would be in no entry. Record what the hook learns in a table outside the group, and write the group's tables from the application.",
            ),
            CausalError::WalLevel(_) => {
                Some("Set wal_level = logical in postgresql.conf (or ALTER SYSTEM SET wal_level = logical) and restart the server.")
            }
            CausalError::NoCaptureSlot(_) => Some(
                "Run SELECT causal.catch_up(); in a transaction of its own (it creates the slot), then retry. It is created once per database.",
            ),
            CausalError::CaptureSlotLost(_) => Some(
                "The sync worker does it at its next sealing run; without the worker, run SELECT causal.catch_up(); once. Then retry the transaction. See docs/OPERATIONS.md (failover).",
            ),
            CausalError::BadRule { .. } => Some("See docs/RULES.md for the rule language."),
            CausalError::BadOperation(_) => None,
            CausalError::UnsupportedAlter { .. } => Some(
                "Only ADD COLUMN of a nullable column, or one with a constant default, is supported; for anything else, causal.unreplicate the table first.",
            ),
            CausalError::StillReferenced { .. } => Some("Unreplicate the referencing table first."),
            CausalError::BadBundle(_) => Some("Pass the bytea that causal.export returned, unchanged. Nothing was stored."),
            CausalError::RuleDenied { .. } => Some("The rule is evaluated as the session's author (causal.author); see causal.table_rules."),
            CausalError::WritesFirst { .. } => Some(
                "Do it before the row changes, or in a transaction of its own: the rows' entry is made at commit, after it, and would not match what the table holds.",
            ),
            CausalError::Corrupt(_) | CausalError::Spi(_) | CausalError::Reconcile(_) => None,
            CausalError::Cancelled(_) => Some("The group's reconciliation refuses this write at the current frontier; nothing was committed."),
            CausalError::BadAddress { .. } => Some(
                "Use a multiaddr such as /ip4/10.0.0.2/tcp/4001/p2p/12D3KooW...; causal.node_addresses() on that node lists its own.",
            ),
            CausalError::BadGroupId(_) => Some("See the group_id column of causal.groups on a node that has the group."),
            CausalError::BadArgument { .. } => None,
            CausalError::WorkerOnly(_) => {
                Some("The sync worker connects as such a role; to seal and place from SQL, call causal.catch_up().")
            }
            CausalError::BadHandoff(_) => Some("Pass the bytea that causal._decode_commits returned, unchanged. Nothing was sealed."),
        }
    }

    /// Raises the error in Postgres. Does not return.
    pub fn report(self, function: &'static str) -> ! {
        let mut report = ErrorReport::new(self.sqlstate(), self.to_string(), function);
        if let Some(hint) = self.hint() {
            report = report.set_hint(hint);
        }
        report.report(PgLogLevel::ERROR);
        unreachable!("ERROR-level reports do not return")
    }
}

/// Unwraps a result at the SQL boundary, raising the error as a Postgres ERROR.
pub trait OrReport<T> {
    fn or_report(self, function: &'static str) -> T;
}

impl<T, E: Into<CausalError>> OrReport<T> for Result<T, E> {
    fn or_report(self, function: &'static str) -> T {
        match self {
            Ok(v) => v,
            Err(e) => e.into().report(function),
        }
    }
}

/// The SQLSTATE a rule error gets.
pub fn rule_sqlstate(e: &causal_core::rules::RuleError) -> pgrx::PgSqlErrorCode {
    match e.kind {
        causal_core::rules::RuleErrorKind::Syntax => pgrx::PgSqlErrorCode::ERRCODE_SYNTAX_ERROR,
        causal_core::rules::RuleErrorKind::UnknownTable | causal_core::rules::RuleErrorKind::UnknownColumn => {
            pgrx::PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN
        }
    }
}
