//! Shared harness for the end-to-end tests: privilege checks, namespaces built by the
//! tests themselves, and guards that undo everything on drop.
//!
//! Each module belongs to one area of the product; tests in `tests/tests/` pick what they
//! need. Nothing here ever sends a packet off the machine (DESIGN.md section 8).

pub mod agent;
pub mod fence;
pub mod host_files;
pub mod netbed;
pub mod privilege;
pub mod proxy_client;
