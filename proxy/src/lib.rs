//! egress-proxy: the L7 allow-list proxy and DNS filter that decides every outbound
//! connection of a runner.
//!
//! The crate is usable on its own (`egress-proxy --policy FILE`) and as a library that the
//! runner-agent drives. It holds no privilege: `unsafe` is forbidden here.
#![forbid(unsafe_code)]

pub mod audit;
mod body;
pub mod clients;
pub mod config;
pub mod control;
pub mod dns;
mod framing;
pub mod fuzz;
mod gate;
mod http;
pub mod intercept;
pub mod limits;
pub mod origdst;
pub mod policy;
pub mod resolve;
pub mod secret_match;
pub mod server;
mod shared;
#[doc(hidden)]
pub mod testing;
pub mod tls;
mod transparent;
pub mod tunnel;
pub mod yaml;
