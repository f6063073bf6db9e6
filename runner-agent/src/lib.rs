//! runner-agent: starts an isolated, egress-firewalled runner for each CI job and destroys
//! it afterwards.
//!
//! The binary (`main.rs`) only parses arguments; everything else lives here so that it can
//! be tested on its own.

pub mod cgroup;
pub mod config;
pub mod egress;
pub mod mask;
pub mod network;
pub mod run;
pub mod sandbox;
pub mod secrets;
pub mod state;
pub mod sys;
