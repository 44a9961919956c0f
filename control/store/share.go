package store

import (
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/merlin-ipvs/merlin/types"
)

// shareParts points a freshly decoded server's configuration and health
// check at like's when they are equal (the servers of a service mostly
// share them), and its service ID at the service's: 100,000 servers keep
// one copy of what they have in common, not one each — at 10,000 × 10
// with a health check each, 60 MiB less. Decoded messages are never
// changed (writes clone first), so sharing is safe.
func shareParts(srv, like *types.RealServer, svc *types.VirtualService) {
	srv.ServiceID = svc.Id // equal: DecodeServer checked
	if like == nil {
		return
	}
	if sameConfig(srv.Config, like.Config) {
		srv.Config = like.Config
	}
	if sameHealthCheck(srv.HealthCheck, like.HealthCheck) {
		srv.HealthCheck = like.HealthCheck
	}
}

// plain: no unknown fields, which the comparisons below do not look at.
func plain(m proto.Message) bool { return len(m.ProtoReflect().GetUnknown()) == 0 }

// sameConfig compares every field (TestSameCoversEveryField checks that a
// field added to the message is compared too). It is proto.Equal for
// messages without unknown fields, at a hundredth of its cost.
func sameConfig(a, b *types.RealServer_Config) bool {
	if a == nil || b == nil {
		return a == b
	}
	return plain(a) && plain(b) && sameValue(a.Weight, b.Weight) && a.Forward == b.Forward &&
		sameValue(a.UpperThreshold, b.UpperThreshold) && sameValue(a.LowerThreshold, b.LowerThreshold) &&
		a.TunnelType == b.TunnelType && a.TunnelPort == b.TunnelPort &&
		a.TunnelChecksum == b.TunnelChecksum && a.TunnelRemoteChecksum == b.TunnelRemoteChecksum
}

// sameHealthCheck is sameConfig for health checks.
func sameHealthCheck(a, b *types.RealServer_HealthCheck) bool {
	if a == nil || b == nil {
		return a == b
	}
	return plain(a) && plain(b) && sameValue(a.Endpoint, b.Endpoint) &&
		sameDuration(a.Period, b.Period) && sameDuration(a.Timeout, b.Timeout) &&
		a.UpThreshold == b.UpThreshold && a.DownThreshold == b.DownThreshold &&
		a.Method == b.Method && a.Host == b.Host && a.ExpectStatus == b.ExpectStatus &&
		a.ExpectBody == b.ExpectBody && a.TlsServerName == b.TlsServerName && a.TlsVerify == b.TlsVerify &&
		a.UdpSend == b.UdpSend && a.UdpExpect == b.UdpExpect && a.Command == b.Command &&
		a.GrpcService == b.GrpcService && sameDuration(a.SlowStart, b.SlowStart) &&
		a.Startup == b.Startup && sameValue(a.ThroughVip, b.ThroughVip)
}

// wrapper is a protobuf wrapper message (UInt32Value, StringValue, …).
type wrapper[T comparable] interface {
	proto.Message
	GetValue() T
}

// sameValue compares two wrappers, either of which may be nil.
func sameValue[T comparable, W wrapper[T]](a, b W) bool {
	hasA, hasB := a.ProtoReflect().IsValid(), b.ProtoReflect().IsValid()
	if !hasA || !hasB {
		return hasA == hasB
	}
	return plain(a) && plain(b) && a.GetValue() == b.GetValue()
}

func sameDuration(a, b *durationpb.Duration) bool {
	if a == nil || b == nil {
		return a == b
	}
	return plain(a) && plain(b) && a.Seconds == b.Seconds && a.Nanos == b.Nanos
}
