//! Authoring: signing operations as an identity and appending them at a group's frontier, and
//! who may ([`members`]: membership entries and member status). Uses [`crate::replay`] (an
//! administrative entry is placed at once) and below; the capture layer above registers what
//! must run before an administrative append.

pub mod members;
