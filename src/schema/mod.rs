//! Table schemas received from the group: the catalog effects of imported schema, rule and
//! unreplicate entries ([`apply`]), and asking the parser whether a received schema's
//! expressions type-check ([`probe`]) before it is stored. Uses [`crate::replay`] and below.

pub mod apply;
pub mod probe;
