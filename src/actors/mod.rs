//! The actix actor layer (feature `actors`).
//!
//! * [`session::StableSession`] — one side of a stable session, supervised: it reconnects,
//!   resumes and replays by itself after its link fails.
//! * [`registry::StableRegistry`] — the server side: takes incoming links and creates or
//!   resumes sessions.

mod pump;
pub mod registry;
pub mod session;
