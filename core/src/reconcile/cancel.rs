//! Why an entry is cancelled, in a form programs can act on: a [`CancelCode`] naming the kind
//! of conflict, beside the human reason and the entries responsible ([`Cancel`]).
//!
//! Constraint kinds carry the SQLSTATE that the same write would have failed with had it run
//! locally against the merged view, so an application can handle a late cancellation the way
//! it handles an immediate error.

use crate::hash::EntryHash;

/// The kind of conflict that cancelled an entry. Its text form ([`CancelCode::as_str`]) is
/// stable: it is stored, sent in notifications and documented (docs/SQL_API.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CancelCode {
    /// A primary key or UNIQUE value another entry holds (23505).
    UniqueViolation,
    /// A referenced row that does not exist, or a deleted row still referenced (23503).
    ForeignKeyViolation,
    /// A CHECK constraint (23514).
    CheckViolation,
    /// A NOT NULL column without a value (23502).
    NotNullViolation,
    /// A rule of the group refuses the write (42501).
    RuleViolation,
    /// The row to update is gone: deleted or replaced by an entry this one did not see.
    RowGone,
    /// The author is not a member of the group at the entry's position.
    NotAMember,
    /// The author was removed from the group, before or concurrently.
    AuthorRemoved,
    /// The operation needs an admin.
    NotAnAdmin,
    /// The table is not replicated in the group at the entry's position.
    TableNotReplicated,
    /// Concurrent deletes that cancel one another: none of them counts.
    ConflictingDeletes,
    /// The operation is malformed for the table: no key, a changed key, an unknown column or
    /// a value of the wrong type.
    InvalidOperation,
}

impl CancelCode {
    pub const ALL: [CancelCode; 12] = [
        CancelCode::UniqueViolation,
        CancelCode::ForeignKeyViolation,
        CancelCode::CheckViolation,
        CancelCode::NotNullViolation,
        CancelCode::RuleViolation,
        CancelCode::RowGone,
        CancelCode::NotAMember,
        CancelCode::AuthorRemoved,
        CancelCode::NotAnAdmin,
        CancelCode::TableNotReplicated,
        CancelCode::ConflictingDeletes,
        CancelCode::InvalidOperation,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CancelCode::UniqueViolation => "unique_violation",
            CancelCode::ForeignKeyViolation => "foreign_key_violation",
            CancelCode::CheckViolation => "check_violation",
            CancelCode::NotNullViolation => "not_null_violation",
            CancelCode::RuleViolation => "rule_violation",
            CancelCode::RowGone => "row_gone",
            CancelCode::NotAMember => "not_a_member",
            CancelCode::AuthorRemoved => "author_removed",
            CancelCode::NotAnAdmin => "not_an_admin",
            CancelCode::TableNotReplicated => "table_not_replicated",
            CancelCode::ConflictingDeletes => "conflicting_deletes",
            CancelCode::InvalidOperation => "invalid_operation",
        }
    }

    pub fn parse(text: &str) -> Option<CancelCode> {
        CancelCode::ALL.into_iter().find(|c| c.as_str() == text)
    }

    /// The SQLSTATE a local write would have failed with, for constraint and permission kinds.
    pub fn sqlstate(self) -> Option<&'static str> {
        match self {
            CancelCode::UniqueViolation => Some("23505"),
            CancelCode::ForeignKeyViolation => Some("23503"),
            CancelCode::CheckViolation => Some("23514"),
            CancelCode::NotNullViolation => Some("23502"),
            CancelCode::RuleViolation => Some("42501"),
            _ => None,
        }
    }
}

impl std::fmt::Display for CancelCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A cancellation as the engine finds it: the kind, the human reason, the entries responsible.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cancel {
    pub code: CancelCode,
    pub reason: String,
    pub responsible: Vec<EntryHash>,
}

impl Cancel {
    pub fn new(code: CancelCode, reason: impl Into<String>, responsible: Vec<EntryHash>) -> Cancel {
        Cancel { code, reason: reason.into(), responsible }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_their_names() {
        for c in CancelCode::ALL {
            assert_eq!(CancelCode::parse(c.as_str()), Some(c));
        }
        let names: std::collections::HashSet<&str> = CancelCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names.len(), CancelCode::ALL.len());
        assert_eq!(CancelCode::parse("nonsense"), None);
    }
}
