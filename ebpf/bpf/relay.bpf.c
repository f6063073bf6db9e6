// SPDX-License-Identifier: GPL-2.0
/*
 * relay.bpf.c: the data phase of an allowed CONNECT tunnel, relayed inside the kernel.
 *
 * Once the proxy has checked everything about a tunnel (policy, SNI, destination), it
 * puts both TCP sockets into `relay_socks` (a SOCKHASH keyed by each socket's cookie,
 * SO_COOKIE in socket(7)) and records in `relay_peers`, for each socket's cookie, the
 * cookie of the other end and a byte counter. The stream verdict program below then runs
 * for every skb received on either socket and redirects it to the egress of the peer
 * (bpf_sk_redirect_hash(), flags 0: send, not receive), so the payload never reaches the
 * proxy process and wakes it only at the tunnel's end.
 *
 * Invariants: a socket is in `relay_socks` only while its entry in `relay_peers` exists
 * (the proxy inserts peers first and removes them last). An skb of a socket without a
 * peer entry (a race with the removal) is passed to the socket's own receive path, where
 * the proxy would read it; nothing is dropped silently.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "relay.h"

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, RELAY_MAX_SOCKETS);
	__type(key, __u64);
	__type(value, __u32); /* a socket fd on update (what aya's SockHash expects) */
} relay_socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, RELAY_MAX_SOCKETS);
	__type(key, __u64);
	__type(value, struct relay_peer);
} relay_peers SEC(".maps");

SEC("sk_skb/stream_verdict")
int relay_verdict(struct __sk_buff *skb)
{
	__u64 cookie = bpf_get_socket_cookie(skb);
	struct relay_peer *peer = bpf_map_lookup_elem(&relay_peers, &cookie);
	if (!peer)
		return SK_PASS;
	__u64 to = peer->peer_cookie;
	/* Counted before the redirect: a failed redirect drops the skb and the tunnel
	 * stalls, which the proxy's idle timeout then ends. */
	__sync_fetch_and_add(&peer->bytes, skb->len);
	return bpf_sk_redirect_hash(skb, &relay_socks, &to, 0);
}

char LICENSE[] SEC("license") = "GPL";
