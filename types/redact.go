package types

import "google.golang.org/protobuf/proto"

// Redacted is the request as it may be logged: a password becomes
// "(set)". The audit log quotes requests through it.
func (r *PutBGPPeerRequest) Redacted() proto.Message {
	if r.GetPeer().GetPassword() == "" {
		return r
	}
	c := proto.Clone(r).(*PutBGPPeerRequest)
	c.Peer.Password = "(set)"
	return c
}

// WithoutPassword is the peer as any read shows it: no password, and
// password_set saying whether one is stored.
func (p *BGPPeerConfig) WithoutPassword() *BGPPeerConfig {
	c := proto.Clone(p).(*BGPPeerConfig)
	c.PasswordSet, c.Password = p.GetPassword() != "", ""
	return c
}
