// Package bgp is merlin's BGP speaker: GoBGP (v4) embedded as a library,
// given the whole set of routes to announce each time (Speaker.Set) and
// announcing exactly that set to its configured peers. It imports nothing
// of merlin's control plane and no etcd.
//
// Safety: nothing received from a peer is ever imported (the global import
// policy rejects everything), only host routes (/32, /128) are exported, a
// peer that sends more prefixes than its limit is shut down and reported,
// and connections from addresses that are no peer are counted and logged
// at most once a minute. FuzzHostileRouter sends arbitrary bytes from
// configured peers in every session state.
//
// Privileges: listening on port 179 needs CAP_NET_BIND_SERVICE; TCP-MD5
// passwords need Linux (TCP_MD5SIG). Dialing out needs nothing special.
package bgp
