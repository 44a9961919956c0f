// Package testobj builds the API objects tests use most. No privileges.
package testobj

import (
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/merlin-ipvs/merlin/types"
)

// TCPService is a weighted round-robin TCP service.
func TCPService(id, ip string, port uint32) *types.VirtualService {
	return &types.VirtualService{
		Id:     id,
		Key:    &types.VirtualService_Key{Ip: ip, Port: port, Protocol: types.Protocol_TCP},
		Config: &types.VirtualService_Config{Scheduler: "wrr"},
	}
}

// Server is a NAT real server of a service.
func Server(svc, ip string, port, weight uint32) *types.RealServer {
	return &types.RealServer{
		ServiceID: svc,
		Key:       &types.RealServer_Key{Ip: ip, Port: port},
		Config:    &types.RealServer_Config{Weight: wrapperspb.UInt32(weight), Forward: types.ForwardMethod_MASQ},
	}
}
