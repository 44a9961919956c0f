package store

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	"github.com/merlin-ipvs/merlin/model"
	"github.com/merlin-ipvs/merlin/types"
)

// DuplicateVIP is a VIP several stored services share: the original
// Merlin allowed it; merlin never writes it.
type DuplicateVIP struct {
	VIP      string   // as the index names it: tcp/IP:PORT, fwmark/ipv4/MARK
	Services []string // sorted; the first holds the index unless it named another already
	Holder   string   // the service the index names
}

// VIPIndexReport is what CheckVIPIndex found and did.
type VIPIndexReport struct {
	Indexed    int // index keys it wrote for services without one (state the original left)
	Duplicates []DuplicateVIP
}

// CheckVIPIndex makes the VIP index (PREFIX/vips/…) name a service for
// every VIP a stored service has: the original Merlin never wrote it, so
// without this a new service could take a migrated service's VIP. A VIP
// several services share gets the index for the first by ID (unless it
// names one already) and is reported. Each write is a transaction that
// creates the index key only if it is still absent and the service
// unchanged, so nodes may run it at once.
func (s *Store) CheckVIPIndex(ctx context.Context) (VIPIndexReport, error) {
	var rep VIPIndexReport
	svcKVs, rev, err := s.rangeAll(ctx, s.servicesPrefix(), 0)
	if err != nil {
		return rep, err
	}
	vipKVs, _, err := s.rangeAll(ctx, s.prefix+"/vips/", rev)
	if err != nil {
		return rep, err
	}
	holders := make(map[string]string, len(vipKVs))
	for _, kv := range vipKVs {
		holders[string(kv.Key)] = string(kv.Value)
	}
	byVIP := map[string][]keyValue{} // services in key order (etcd's)
	for _, kv := range svcKVs {
		svc := &types.VirtualService{}
		if proto.Unmarshal(originalEtcd2Value(kv.Value), svc) != nil || svc.Key == nil {
			continue // undecodable: listed as invalid elsewhere
		}
		if _, err := netip.ParseAddr(svc.Key.Ip); err != nil && svc.Key.Fwmark == 0 {
			continue // no VIP to index
		}
		vk := model.VIPKey(svc.Key)
		byVIP[vk] = append(byVIP[vk], kv)
	}
	for _, vk := range slices.Sorted(maps.Keys(byVIP)) {
		kvs := byVIP[vk]
		holder, indexed := holders[s.prefix+"/vips/"+vk]
		if !indexed {
			ok, err := s.createVIPIndex(ctx, vk, kvs[0])
			if err != nil {
				return rep, err
			}
			if ok {
				rep.Indexed++
				holder = idOf(kvs[0].Key)
			}
		}
		if len(kvs) > 1 {
			d := DuplicateVIP{VIP: vk, Holder: holder}
			for _, kv := range kvs {
				d.Services = append(d.Services, idOf(kv.Key))
			}
			rep.Duplicates = append(rep.Duplicates, d)
		}
	}
	return rep, nil
}

func idOf(key []byte) string { return string(key[bytes.LastIndexByte(key, '/')+1:]) }

func (s *Store) createVIPIndex(ctx context.Context, vk string, svc keyValue) (bool, error) {
	key, id := s.prefix+"/vips/"+vk, idOf(svc.Key)
	resp, err := s.client.Txn(ctx).If(
		clientv3.Compare(clientv3.CreateRevision(key), "=", 0),
		clientv3.Compare(clientv3.ModRevision(string(svc.Key)), "=", svc.ModRevision),
	).Then(clientv3.OpPut(key, id)).Commit()
	if err != nil {
		return false, fmt.Errorf("index VIP %s for service %q: %w", vk, id, err)
	}
	return resp.Succeeded, nil
}

// maxFindings bounds the invalid keys Findings returns.
const maxFindings = 100

// Findings reads the desired state and returns what an operator must fix:
// stored values merlin cannot use (the first maxFindings by key; a service
// that shares its VIP with another is among them) and VIPs several valid
// services share.
func (s *Store) Findings(ctx context.Context) ([]*types.InvalidKey, []*types.DuplicateVIP, error) {
	st, err := s.ListState(ctx)
	if err != nil {
		return nil, nil, err
	}
	var invalid []*types.InvalidKey
	for _, k := range slices.Sorted(maps.Keys(st.Invalid)) {
		if len(invalid) == maxFindings {
			break
		}
		invalid = append(invalid, &types.InvalidKey{Key: k, Reason: st.Invalid[k]})
	}
	dups := st.DuplicateVIPs()
	return invalid, dups, nil
}
