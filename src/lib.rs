//! chatd: a single-threaded line chat server (skeleton; the core lands next).

pub mod http;
pub mod ws;
