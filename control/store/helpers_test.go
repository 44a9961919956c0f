package store

import "github.com/merlin-ipvs/merlin/types"

func svcAt(id, ip string, sched string) *types.VirtualService {
	return &types.VirtualService{Id: id, Key: &types.VirtualService_Key{Ip: ip, Port: 80, Protocol: types.Protocol_TCP},
		Config: &types.VirtualService_Config{Scheduler: sched}}
}
