//! Edge mode: one origin connection per stream per replica, however many
//! HTTP-FLV players watch it.
//!
//! [`flv`] cuts an origin's FLV body into tags and says what each is to a
//! player that joins late; [`ring`] keeps a stream's recent frames once
//! and where each player is in them.

pub mod flv;
pub mod ring;
