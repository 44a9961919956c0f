package store

import (
	"net/netip"
	"strings"

	"github.com/merlin-ipvs/merlin/model"
	"github.com/merlin-ipvs/merlin/types"
)

// keys is the key layout in etcd, built and parsed here only:
//
//	PREFIX/services/ID            VirtualService (protobuf)
//	PREFIX/servers/ID/IP:PORT     RealServer (protobuf); [IPv6]:PORT
//	PREFIX/vips/tcp/IP:PORT       ID of the service that owns the VIP
//	PREFIX/vips/fwmark/ipv4/MARK  likewise for firewall marks
//	PREFIX/revision               empty; its mod revision is the last change's
//	PREFIX/confirm-deletions      the revision up to which mass deletions may apply
//	PREFIX/drain/NODE             a node's drain (JSON)
//	PREFIX/server-drains/ID/IP:PORT  a real server's drain (JSON)
//	PREFIX/bgp/settings           the cluster's BGP settings (BGPSettings)
//	PREFIX/bgp/peers/NAME         a cluster BGP peer (BGPPeerConfig, with its password)
//	PREFIX/nodes/NODE             a node's status (protobuf), under its lease
type keys struct{ prefix string }

func (k keys) all() string            { return k.prefix + "/" }
func (k keys) servicesPrefix() string { return k.prefix + "/services/" }
func (k keys) serversPrefix() string  { return k.prefix + "/servers/" }
func (k keys) markerKey() string      { return k.prefix + "/revision" }
func (k keys) nodePrefix() string     { return k.prefix + "/nodes/" }
func (k keys) confirmKey() string     { return k.prefix + "/confirm-deletions" }
func (k keys) drainPrefix() string    { return k.prefix + "/drain/" }
func (k keys) pingKey() string        { return k.prefix + "/health" }
func (k keys) bgpPrefix() string      { return k.prefix + "/bgp/" }
func (k keys) bgpSettingsKey() string { return k.prefix + "/bgp/settings" }
func (k keys) bgpPeersPrefix() string { return k.prefix + "/bgp/peers/" }

func (k keys) isBGPKey(key string) bool { return strings.HasPrefix(key, k.bgpPrefix()) }

func (k keys) serviceKey(id string) string   { return k.servicesPrefix() + id }
func (k keys) serverPrefix(id string) string { return k.serversPrefix() + id + "/" }

func (k keys) vipKey(v *types.VirtualService_Key) string {
	return k.prefix + "/vips/" + model.VIPKey(v)
}

func (k keys) serverKey(id string, s *types.RealServer_Key) string {
	return k.serverPrefix(id) + model.ServerKeyString(s)
}

// keyKind splits a key of the desired state; ok is false for keys the
// state does not track (VIP index, node status).
func (k keys) keyKind(key string) (service bool, id string, ok bool) {
	if rest, found := strings.CutPrefix(key, k.servicesPrefix()); found {
		return true, rest, true
	}
	if rest, found := strings.CutPrefix(key, k.serversPrefix()); found {
		id, _, found = strings.Cut(rest, "/")
		return false, id, found
	}
	return false, "", false
}

// nodeOf is the node a status key belongs to.
func (k keys) nodeOf(key string) (string, bool) { return strings.CutPrefix(key, k.nodePrefix()) }

// drainOf is the node a drain key belongs to.
func (k keys) drainOf(key string) (string, bool) { return strings.CutPrefix(key, k.drainPrefix()) }

func lastSegment(key string) string {
	for i := len(key) - 1; i >= 0; i-- {
		if key[i] == '/' {
			return key[i+1:]
		}
	}
	return key
}

// serverIdentity is the service ID and key of a server's etcd key.
func serverIdentity(id, key string) *types.RealServer {
	srv := &types.RealServer{ServiceID: id, Key: &types.RealServer_Key{}}
	if ap, err := netip.ParseAddrPort(lastSegment(key)); err == nil {
		srv.Key.Ip, srv.Key.Port = ap.Addr().String(), uint32(ap.Port())
	}
	return srv
}
