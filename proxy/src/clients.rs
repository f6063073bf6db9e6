//! The per-client policy table: which runner (and so which policy) a connection belongs
//! to, chosen by the connection's source address.
//!
//! The agent registers each runner's address with [`ClientTable::set`]; standalone mode
//! installs one default client that every address maps to. Unknown addresses get nothing:
//! there is no implicit fallback, so a missing registration fails closed.
//!
//! Each client also carries its count of open connections, so one runner cannot exhaust
//! the proxy for the others ([`ClientEntry::try_acquire`]); the count is released by the
//! returned guard's `Drop`, so no error path can leak a slot.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use crate::audit::{AuditEvent, Kind, Source, Verdict};
use crate::intercept::Interception;
use crate::policy::Policy;

/// One registered client.
#[derive(Debug)]
pub struct ClientEntry {
    /// Unique for the life of the process: keys state that must never be shared between
    /// clients (pooled upstream connections).
    pub id: u64,
    /// Runner name written into audit events.
    pub runner: Option<String>,
    /// Job id written into audit events.
    pub job: Option<String>,
    /// The policy its traffic is judged by.
    pub policy: Arc<Policy>,
    /// TLS termination and credential injection for this client (`crate::intercept`);
    /// `None`: tunnels are never terminated and nothing is injected.
    pub interception: Option<Arc<Interception>>,
    /// Open proxy connections (all TCP listeners but DNS).
    active: AtomicUsize,
    /// Open DNS-over-TCP connections, counted apart so that busy proxy traffic never
    /// starves name resolution (and the reverse).
    dns_active: AtomicUsize,
}

/// Which connection count a slot is taken from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotKind {
    /// Proxy listeners (explicit, transparent TLS, transparent HTTP).
    Proxy,
    /// DNS over TCP.
    Dns,
}

impl ClientEntry {
    /// A client entry.
    pub fn new(runner: Option<String>, job: Option<String>, policy: Arc<Policy>) -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        ClientEntry {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            runner,
            job,
            policy,
            interception: None,
            active: AtomicUsize::new(0),
            dns_active: AtomicUsize::new(0),
        }
    }

    /// The same entry with `interception` (builder style).
    pub fn with_interception(mut self, interception: Option<Arc<Interception>>) -> Self {
        self.interception = interception;
        self
    }

    fn counter(&self, kind: SlotKind) -> &AtomicUsize {
        match kind {
            SlotKind::Proxy => &self.active,
            SlotKind::Dns => &self.dns_active,
        }
    }

    /// Takes one proxy connection slot if fewer than `max` are in use.
    pub fn try_acquire(self: &Arc<Self>, max: usize) -> Option<ConnSlot> {
        self.try_acquire_kind(SlotKind::Proxy, max)
    }

    /// Takes one slot of `kind` if fewer than `max` are in use.
    pub fn try_acquire_kind(self: &Arc<Self>, kind: SlotKind, max: usize) -> Option<ConnSlot> {
        let counter = self.counter(kind);
        let mut current = counter.load(Ordering::Relaxed);
        loop {
            if current >= max {
                return None;
            }
            match counter.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Some(ConnSlot {
                        entry: Arc::clone(self),
                        kind,
                    })
                }
                Err(now) => current = now,
            }
        }
    }

    /// Open connections right now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// A fresh event carrying this client's job and runner.
    pub fn event(&self, source: Source, kind: Kind, verdict: Verdict) -> AuditEvent {
        let mut event = AuditEvent::new(source, kind, verdict);
        event.job.clone_from(&self.job);
        event.runner.clone_from(&self.runner);
        event
    }
}

/// A held connection slot; released on drop.
#[derive(Debug)]
pub struct ConnSlot {
    entry: Arc<ClientEntry>,
    kind: SlotKind,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.entry.counter(self.kind).fetch_sub(1, Ordering::AcqRel);
    }
}

/// Source address → client.
#[derive(Debug, Default)]
pub struct ClientTable {
    by_ip: RwLock<HashMap<IpAddr, Arc<ClientEntry>>>,
    default: RwLock<Option<Arc<ClientEntry>>>,
}

impl ClientTable {
    /// Registers (or replaces) the client at `ip`.
    pub fn set(&self, ip: IpAddr, entry: ClientEntry) {
        self.by_ip
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ip.to_canonical(), Arc::new(entry));
    }

    /// Forgets the client at `ip`; returns whether it was known.
    pub fn remove(&self, ip: IpAddr) -> bool {
        self.by_ip
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&ip.to_canonical())
            .is_some()
    }

    /// Serves `entry` to every address that has no registration of its own.
    pub fn set_default(&self, entry: Option<ClientEntry>) {
        *self.default.write().unwrap_or_else(|e| e.into_inner()) = entry.map(Arc::new);
    }

    /// The client for a source address, if any.
    pub fn get(&self, ip: IpAddr) -> Option<Arc<ClientEntry>> {
        let ip = ip.to_canonical();
        if let Some(entry) = self
            .by_ip
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&ip)
        {
            return Some(Arc::clone(entry));
        }
        self.default
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_and_limits() {
        let table = ClientTable::default();
        let ip: IpAddr = "10.249.0.2".parse().unwrap();
        assert!(table.get(ip).is_none());
        table.set(
            ip,
            ClientEntry::new(Some("r-1".into()), None, Arc::new(Policy::deny_all())),
        );
        let entry = table.get("::ffff:10.249.0.2".parse().unwrap()).unwrap();
        let a = entry.try_acquire(2).unwrap();
        let _b = entry.try_acquire(2).unwrap();
        assert!(entry.try_acquire(2).is_none());
        drop(a);
        assert!(entry.try_acquire(2).is_some());
        // DNS connections are counted apart.
        let _held: Vec<_> = (0..2).filter_map(|_| entry.try_acquire(2)).collect();
        let dns = entry.try_acquire_kind(SlotKind::Dns, 1).unwrap();
        assert!(entry.try_acquire_kind(SlotKind::Dns, 1).is_none());
        drop(dns);
        assert!(entry.try_acquire_kind(SlotKind::Dns, 1).is_some());
        assert!(table.remove(ip));
        assert!(table.get(ip).is_none());
        table.set_default(Some(ClientEntry::new(
            None,
            None,
            Arc::new(Policy::deny_all()),
        )));
        assert!(table.get(ip).is_some());
    }
}
