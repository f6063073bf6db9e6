/* relay.h: the map value shared by relay.bpf.c and egress_ebpf::relay (mirrored there
 * as RawRelayPeer, with size and offset assertions on both sides). */
#ifndef RELAY_H
#define RELAY_H

#include <linux/types.h>

/* Sockets relayed at once (two per tunnel). */
#define RELAY_MAX_SOCKETS 16384

/* relay_peers value, keyed by a relayed socket's cookie. */
struct relay_peer {
	/* Cookie of the socket this one's bytes go to. */
	__u64 peer_cookie;
	/* Payload bytes received on this socket and redirected. */
	__u64 bytes;
};

_Static_assert(sizeof(struct relay_peer) == 16, "relay_peer layout");
_Static_assert(__builtin_offsetof(struct relay_peer, bytes) == 8, "relay_peer layout");

#endif
