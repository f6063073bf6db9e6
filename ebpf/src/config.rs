//! What a runner may reach: [`FenceConfig`], validated and turned into the `fence_config`
//! map value.
//!
//! The fence knows one peer per runner, the host-side address of its veth, where the
//! proxy and the DNS filter listen. Everything else is redirected there or denied (see
//! the crate docs for the full table). Validation refuses configurations that would make
//! two purposes share a port or leave a listener on port 0, since the programs compare
//! ports to decide.

use std::net::Ipv4Addr;

use serde::Deserialize;

use crate::maps::{RawConfig, OTHER_TCP_DENY, OTHER_TCP_HTTP};

/// What happens to TCP connections to ports other than 53 and 443.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OtherTcp {
    /// Redirect to the transparent HTTP listener; the proxy decides by name and port
    /// (it learns the original port from [`crate::OriginalDestinations`]).
    #[default]
    HttpListener,
    /// Deny with EPERM and a denial event.
    Deny,
}

/// The fence of one runner.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FenceConfig {
    /// Host-side veth address of the runner: the only address it may reach.
    pub proxy_addr_v4: Ipv4Addr,
    /// Runner-side veth address: the only source address the tc program accepts.
    pub runner_addr_v4: Ipv4Addr,
    /// Explicit HTTP proxy port (what HTTP(S)_PROXY points at); reachable as is.
    pub explicit_proxy_port: u16,
    /// Transparent TLS listener: TCP to port 443 anywhere is redirected here.
    pub transparent_tls_port: u16,
    /// Transparent HTTP listener: TCP to other ports is redirected here (see [`OtherTcp`]).
    pub transparent_http_port: u16,
    /// DNS filter, UDP and TCP: port 53 anywhere is redirected here.
    pub dns_port: u16,
    /// Copied into every denial event, so one reader can serve several runners.
    pub runner_id: u32,
    /// TCP to ports other than 53 and 443.
    #[serde(default)]
    pub other_tcp: OtherTcp,
    /// Whether the runner's own loopback (127.0.0.0/8, ::1) is reachable. It lives in the
    /// runner's own network namespace, so it reaches nothing outside the runner.
    #[serde(default = "default_true")]
    pub allow_loopback: bool,
}

fn default_true() -> bool {
    true
}

/// A [`FenceConfig`] the programs could not enforce as meant.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A listener port is zero.
    #[error("{0} must not be 0")]
    ZeroPort(&'static str),
    /// Two listeners share a port, so the programs could not tell them apart.
    #[error("{0} and {1} use the same port {2}")]
    SharedPort(&'static str, &'static str, u16),
    /// The proxy address is unspecified, loopback, multicast or broadcast.
    #[error("proxy address {0} cannot be a runner's peer")]
    BadProxyAddr(Ipv4Addr),
    /// The runner address equals the proxy address or is not a unicast address.
    #[error("runner address {0} cannot be the runner's own veth address")]
    BadRunnerAddr(Ipv4Addr),
}

fn unusable(addr: Ipv4Addr) -> bool {
    addr.is_unspecified() || addr.is_loopback() || addr.is_multicast() || addr.is_broadcast()
}

impl FenceConfig {
    /// Checks the rules listed on [`ConfigError`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        if unusable(self.proxy_addr_v4) {
            return Err(ConfigError::BadProxyAddr(self.proxy_addr_v4));
        }
        if unusable(self.runner_addr_v4) || self.runner_addr_v4 == self.proxy_addr_v4 {
            return Err(ConfigError::BadRunnerAddr(self.runner_addr_v4));
        }
        let ports = [
            ("explicit_proxy_port", self.explicit_proxy_port),
            ("transparent_tls_port", self.transparent_tls_port),
            ("transparent_http_port", self.transparent_http_port),
            ("dns_port", self.dns_port),
        ];
        for (i, (name, port)) in ports.iter().enumerate() {
            if *port == 0 {
                return Err(ConfigError::ZeroPort(name));
            }
            if let Some((other, _)) = ports[..i].iter().find(|(_, p)| p == port) {
                return Err(ConfigError::SharedPort(other, name, *port));
            }
        }
        Ok(())
    }

    /// The value of the `fence_config` map.
    pub(crate) fn to_raw(&self) -> RawConfig {
        RawConfig {
            proxy_addr: u32::from_ne_bytes(self.proxy_addr_v4.octets()),
            runner_addr: u32::from_ne_bytes(self.runner_addr_v4.octets()),
            explicit_port: self.explicit_proxy_port,
            tls_port: self.transparent_tls_port,
            http_port: self.transparent_http_port,
            dns_port: self.dns_port,
            runner_id: self.runner_id,
            other_tcp: match self.other_tcp {
                OtherTcp::HttpListener => OTHER_TCP_HTTP,
                OtherTcp::Deny => OTHER_TCP_DENY,
            },
            allow_loopback: u8::from(self.allow_loopback),
            pad: [0; 2],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> FenceConfig {
        FenceConfig {
            proxy_addr_v4: Ipv4Addr::new(10, 250, 0, 1),
            runner_addr_v4: Ipv4Addr::new(10, 250, 0, 2),
            explicit_proxy_port: 3128,
            transparent_tls_port: 3129,
            transparent_http_port: 3130,
            dns_port: 5353,
            runner_id: 7,
            other_tcp: OtherTcp::HttpListener,
            allow_loopback: true,
        }
    }

    #[test]
    fn valid_config_passes_and_keeps_network_order() {
        let cfg = sample();
        assert_eq!(cfg.validate(), Ok(()));
        let raw = cfg.to_raw();
        assert_eq!(raw.proxy_addr.to_ne_bytes(), [10, 250, 0, 1]);
        assert_eq!(raw.dns_port, 5353);
        assert_eq!(raw.allow_loopback, 1);
    }

    #[test]
    fn shared_and_zero_ports_are_refused() {
        let mut cfg = sample();
        cfg.dns_port = 3128;
        assert_eq!(
            cfg.validate(),
            Err(ConfigError::SharedPort(
                "explicit_proxy_port",
                "dns_port",
                3128
            ))
        );
        cfg.dns_port = 0;
        assert_eq!(cfg.validate(), Err(ConfigError::ZeroPort("dns_port")));
    }

    #[test]
    fn unusable_addresses_are_refused() {
        let mut cfg = sample();
        cfg.proxy_addr_v4 = Ipv4Addr::LOCALHOST;
        assert!(matches!(cfg.validate(), Err(ConfigError::BadProxyAddr(_))));
        let mut cfg = sample();
        cfg.runner_addr_v4 = cfg.proxy_addr_v4;
        assert!(matches!(cfg.validate(), Err(ConfigError::BadRunnerAddr(_))));
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let yaml = "proxy_addr_v4: 10.0.0.1\nrunner_addr_v4: 10.0.0.2\nexplicit_proxy_port: 1\n\
                    transparent_tls_port: 2\ntransparent_http_port: 3\ndns_port: 4\nrunner_id: 1\n\
                    bogus: 1\n";
        let err = serde_yaml::from_str::<FenceConfig>(yaml).unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }
}
