package model

import (
	"google.golang.org/protobuf/proto"

	"github.com/merlin-ipvs/merlin/types"
)

// EffectiveForward is the server's forward method, or the service default.
func EffectiveForward(s *types.RealServer, svc *types.VirtualService) types.ForwardMethod {
	if f := s.GetConfig().GetForward(); f != types.ForwardMethod_UNSET_FORWARD_METHOD {
		return f
	}
	return svc.GetDefaults().GetForward()
}

// EffectiveHealthCheck is the service's default check with the fields the
// server sets laid over it; nil when neither has one.
func EffectiveHealthCheck(s *types.RealServer, svc *types.VirtualService) *types.RealServer_HealthCheck {
	def, own := svc.GetDefaults().GetHealthCheck(), s.GetHealthCheck()
	if def == nil && own == nil {
		return nil
	}
	h := &types.RealServer_HealthCheck{}
	if def != nil {
		proto.Merge(h, def)
	}
	if own != nil {
		MergePresent(h, own) // an endpoint "" of its own turns the default check off
	}
	return h
}
