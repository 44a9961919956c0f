package store

import (
	"strconv"
	"strings"
	"testing"

	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/merlin-ipvs/merlin/model"
	"github.com/merlin-ipvs/merlin/types"
)

func testState(t *testing.T, services ...*types.VirtualService) *State {
	t.Helper()
	st := NewState("/merlin", 10)
	for _, svc := range services {
		n, err := model.NormalizeService(svc)
		if err != nil {
			t.Fatal(err)
		}
		st.Services[n.Id] = &ServiceState{Service: n, Servers: map[string]*types.RealServer{}}
	}
	return st
}

func withServer(t *testing.T, st *State, id, addr string, weight uint32) {
	t.Helper()
	ss := st.Services[id]
	ip, port, _ := strings.Cut(addr, ":")
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := model.NormalizeServer(&types.RealServer{ServiceID: id, Key: &types.RealServer_Key{Ip: ip, Port: uint32(p)},
		Config: &types.RealServer_Config{Weight: wrapperspb.UInt32(weight), Forward: types.ForwardMethod_MASQ}}, ss.Service)
	if err != nil {
		t.Fatal(err)
	}
	servers := map[string]*types.RealServer{}
	for k, v := range ss.Servers {
		servers[k] = v
	}
	servers[model.ServerKeyString(srv.Key)] = srv
	st.Services[id] = &ServiceState{Service: ss.Service, Servers: servers}
}

func svcAt(id, ip string, sched string) *types.VirtualService {
	return &types.VirtualService{Id: id, Key: &types.VirtualService_Key{Ip: ip, Port: 80, Protocol: types.Protocol_TCP},
		Config: &types.VirtualService_Config{Scheduler: sched}}
}
