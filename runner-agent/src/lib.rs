//! runner-agent: starts an isolated, egress-firewalled runner for each CI job and destroys
//! it afterwards.
//!
//! The binary (`main.rs`) only parses arguments; everything else lives here so that it can
//! be tested on its own.

pub mod approval;
pub mod cgroup;
pub mod config;
pub mod credentials;
pub mod egress;
pub mod files;
pub mod interception;
pub mod mask;
pub mod network;
pub mod output;
pub mod record;
pub mod run;
pub mod sandbox;
pub mod secrets;
pub mod state;
pub mod sys;
