//! Loom models of actix-tether's shared-memory ring and slab, compiled from the library's own
//! source files. Run: `cd tests/loom && RUSTFLAGS="--cfg loom" cargo test --release --lib`.
#![cfg_attr(not(loom), allow(dead_code, unused_imports))]

#[path = "../../../src/sync.rs"]
mod sync;

#[allow(dead_code)]
#[path = "shm.rs"]
mod shm;
