package store_test

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/merlin-ipvs/merlin/types"
)

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func tcpService(id, ip string, port uint32) *types.VirtualService {
	return &types.VirtualService{
		Id:     id,
		Key:    &types.VirtualService_Key{Ip: ip, Port: port, Protocol: types.Protocol_TCP},
		Config: &types.VirtualService_Config{Scheduler: "wrr"},
	}
}

func server(svc, ip string, port, weight uint32) *types.RealServer {
	return &types.RealServer{
		ServiceID: svc,
		Key:       &types.RealServer_Key{Ip: ip, Port: port},
		Config:    &types.RealServer_Config{Weight: wrapperspb.UInt32(weight), Forward: types.ForwardMethod_MASQ},
	}
}

// noErr(t)(call()) fails the test if the call failed.

const prefix = "/merlin"

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
