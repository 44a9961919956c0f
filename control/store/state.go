package store

import (
	"encoding/base64"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/merlin-ipvs/merlin/model"
	"github.com/merlin-ipvs/merlin/types"
)

// ServiceState is one decoded service with its valid servers, keyed by
// "IP:PORT" ("[IP]:PORT" for IPv6). It is never modified once built.
type ServiceState struct {
	Service *types.VirtualService
	Servers map[string]*types.RealServer
}

type rawValue struct {
	value       []byte
	modRevision int64
}

// State is the desired state decoded from etcd at one revision. Values that
// do not decode or validate are kept out of Services and listed in Invalid
// (etcd key → reason); a server is checked against its service, so it is
// re-checked whenever its service changes.
type State struct {
	Revision int64
	Services map[string]*ServiceState
	Invalid  map[string]string
	// ConfirmedDeletions: nodes may apply mass deletions up to this revision.
	ConfirmedDeletions int64
	// Drains: nodes whose BGP announcements are drained, by node name.
	// Replaced whole on a change, so it may be shared.
	Drains map[string]Drain
	// ServerDrains: real servers being drained, by "ID/IP:PORT". Replaced
	// whole on a change, so it may be shared.
	ServerDrains map[string]ServerDrain
	// BGP: the cluster's BGP settings and peers (passwords included).
	// Replaced whole on a change, so it may be shared; never nil once listed.
	BGP *BGPConfig

	keys
	seen        int64           // the last revision the state includes (list, or last event)
	touched     map[string]bool // service IDs changed since the last Update (the watcher's copy)
	rawServices map[string]rawValue
	rawServers  map[string]map[string]rawValue // service ID → etcd key → value
	vips        vipShare
}

func NewState(prefix string, revision int64) *State {
	return &State{
		seen:        revision,
		Revision:    revision,
		Services:    map[string]*ServiceState{},
		Invalid:     map[string]string{},
		keys:        keys{prefix: prefix},
		rawServices: map[string]rawValue{},
		rawServers:  map[string]map[string]rawValue{},
	}
}

// Clone returns a copy whose later changes do not affect s. Services are
// shared: they are immutable.
func (s *State) Clone() *State {
	c := &State{
		Revision:           s.Revision,
		Services:           maps.Clone(s.Services),
		Invalid:            maps.Clone(s.Invalid),
		keys:               s.keys,
		ConfirmedDeletions: s.ConfirmedDeletions,
		Drains:             s.Drains,
		ServerDrains:       s.ServerDrains,
		BGP:                s.BGP,
		rawServices:        maps.Clone(s.rawServices),
		rawServers:         make(map[string]map[string]rawValue, len(s.rawServers)),
		vips:               s.vips.clone(),
	}
	for id, m := range s.rawServers {
		c.rawServers[id] = maps.Clone(m)
	}
	return c
}

// put records a value written at key and rebuilds the service it affects;
// it reports whether the key is part of the desired state.
func (s *State) put(key string, value []byte, modRevision int64) bool {
	if key == s.confirmKey() {
		s.ConfirmedDeletions, _ = strconv.ParseInt(string(value), 10, 64)
		return true
	}
	if node, ok := s.drainOf(key); ok {
		s.setDrain(node, value)
		return true
	}
	if id, ok := s.serverDrainOf(key); ok {
		s.setServerDrain(id, value, modRevision)
		return true
	}
	if s.isBGPKey(key) {
		s.setBGP(key, value, modRevision)
		return true
	}
	isService, id, ok := s.keyKind(key)
	if !ok {
		return false
	}
	s.touch(id)
	raw := rawValue{value: value, modRevision: modRevision}
	if isService {
		s.rawServices[id] = raw
		s.rebuild(id)
		return true
	}
	if s.rawServers[id] == nil {
		s.rawServers[id] = map[string]rawValue{}
	}
	s.rawServers[id][key] = raw
	s.updateServer(id, key, &raw)
	return true
}

func (s *State) touch(id string) {
	if s.touched == nil {
		s.touched = map[string]bool{}
	}
	s.touched[id] = true
}

// Update is what the watcher delivers: after a list, the whole state
// (Full); after watch events, only the services that changed since the
// previous Update. Its ServiceStates are immutable and shared.
type Update struct {
	Revision int64
	Full     bool
	// Services: every service (Full), or each changed one by ID with nil
	// for a service that no longer exists (or no longer decodes).
	Services           map[string]*ServiceState
	Invalid            map[string]string // always complete
	ConfirmedDeletions int64
	Drains             map[string]Drain       // always complete; shared
	ServerDrains       map[string]ServerDrain // always complete; shared
	BGP                *BGPConfig             // always complete; shared
	// Received is when the watcher got the change from etcd (for
	// merlin_change_apply_seconds); zero when unknown.
	Received time.Time
}

// update takes what changed since the last one; full hands over every service.
func (s *State) update(full bool) *Update {
	defer func() { s.touched = nil }()
	if full {
		return s.FullUpdate()
	}
	u := &Update{Revision: s.Revision, Invalid: maps.Clone(s.Invalid), ConfirmedDeletions: s.ConfirmedDeletions, Drains: s.Drains, ServerDrains: s.ServerDrains, BGP: s.BGP,
		Services: make(map[string]*ServiceState, len(s.touched))}
	for id := range s.touched {
		u.Services[id] = s.Services[id]
	}
	return u
}

// FullUpdate is an Update carrying all of s.
func (s *State) FullUpdate() *Update {
	return &Update{Revision: s.Revision, Full: true, Services: maps.Clone(s.Services), Invalid: maps.Clone(s.Invalid), ConfirmedDeletions: s.ConfirmedDeletions, Drains: s.Drains, ServerDrains: s.ServerDrains, BGP: s.BGP}
}

// Apply brings s (a zero State to start) up to date with u; it reports
// the service IDs u changed (nil: all of them, for a full update).
func (s *State) Apply(u *Update) map[string]bool {
	s.Revision, s.Invalid, s.ConfirmedDeletions, s.Drains, s.ServerDrains, s.BGP = u.Revision, u.Invalid, u.ConfirmedDeletions, u.Drains, u.ServerDrains, u.BGP
	if u.Full {
		s.Services = maps.Clone(u.Services)
		return nil
	}
	if s.Services == nil {
		s.Services = map[string]*ServiceState{}
	}
	changed := make(map[string]bool, len(u.Services))
	for id, ss := range u.Services {
		changed[id] = true
		if ss == nil {
			delete(s.Services, id)
		} else {
			s.Services[id] = ss
		}
	}
	return changed
}

// updateServer re-decodes one server of a service whose own value did not
// change (nil raw: the server was deleted).
func (s *State) updateServer(id, key string, raw *rawValue) {
	delete(s.Invalid, key)
	ss := s.Services[id]
	if ss == nil {
		if raw == nil {
			return
		}
		if _, ok := s.rawServices[id]; !ok {
			s.Invalid[key] = fmt.Sprintf("service %q does not exist", id)
		} else {
			s.Invalid[key] = fmt.Sprintf("service %q is invalid", id)
		}
		return
	}
	// ServiceStates are shared with delivered views: replace, never modify.
	servers := maps.Clone(ss.Servers)
	delete(servers, key[strings.LastIndexByte(key, '/')+1:])
	if raw != nil {
		srv, err := DecodeServer(key, raw.value, raw.modRevision, ss.Service)
		if err != nil {
			s.Invalid[key] = err.Error()
		} else {
			shareParts(srv, anyServer(servers), ss.Service)
			servers[model.ServerKeyString(srv.Key)] = srv
		}
	}
	s.Services[id] = &ServiceState{Service: ss.Service, Servers: servers}
}

// anyServer is one of servers (nil: none).
func anyServer(servers map[string]*types.RealServer) *types.RealServer {
	for _, srv := range servers {
		return srv
	}
	return nil
}

// delete records a deleted key and rebuilds the service it affects; it
// reports whether the key is part of the desired state.
func (s *State) delete(key string) bool {
	if key == s.confirmKey() {
		s.ConfirmedDeletions = 0
		return true
	}
	if node, ok := s.drainOf(key); ok {
		s.setDrain(node, nil)
		return true
	}
	if id, ok := s.serverDrainOf(key); ok {
		s.setServerDrain(id, nil, 0)
		return true
	}
	if s.isBGPKey(key) {
		s.setBGP(key, nil, 0)
		return true
	}
	isService, id, ok := s.keyKind(key)
	if !ok {
		return false
	}
	s.touch(id)
	delete(s.Invalid, key)
	if isService {
		delete(s.rawServices, id)
		s.rebuild(id)
		return true
	}
	if m := s.rawServers[id]; m != nil {
		delete(m, key)
		if len(m) == 0 {
			delete(s.rawServers, id)
		}
	}
	s.updateServer(id, key, nil)
	return true
}

// rebuild decodes one service and its servers from their raw values.
func (s *State) rebuild(id string) {
	svcKey := s.serviceKey(id)
	delete(s.Invalid, svcKey)
	for key := range s.rawServers[id] {
		delete(s.Invalid, key)
	}
	delete(s.Services, id)

	raw, ok := s.rawServices[id]
	var svc *types.VirtualService
	if ok {
		var err error
		svc, err = DecodeService(svcKey, raw.value, raw.modRevision)
		if err != nil {
			s.Invalid[svcKey] = err.Error()
			svc = nil
		}
	}
	if shared := s.shareVIP(id, svc); shared != "" {
		s.Invalid[svcKey], svc = shared, nil
	}
	servers := make(map[string]*types.RealServer, len(s.rawServers[id]))
	var last *types.RealServer
	for key, raw := range s.rawServers[id] {
		switch {
		case !ok:
			s.Invalid[key] = fmt.Sprintf("service %q does not exist", id)
		case svc == nil:
			s.Invalid[key] = fmt.Sprintf("service %q is invalid", id)
		default:
			srv, err := DecodeServer(key, raw.value, raw.modRevision, svc)
			if err != nil {
				s.Invalid[key] = err.Error()
				continue
			}
			shareParts(srv, last, svc)
			servers[model.ServerKeyString(srv.Key)] = srv
			last = srv
		}
	}
	if svc != nil {
		s.Services[id] = &ServiceState{Service: svc, Servers: servers}
	}
}

// ListResponse renders the state as the API's List answer, sorted by
// service ID and server address.
func (s *State) ListResponse() *types.ListResponse {
	resp := &types.ListResponse{Revision: s.Revision}
	for _, id := range slices.Sorted(maps.Keys(s.Services)) {
		ss := s.Services[id]
		item := &types.ListResponse_Item{Service: ss.Service}
		for _, k := range slices.SortedFunc(maps.Keys(ss.Servers), model.CompareServerKeys) {
			item.Servers = append(item.Servers, ss.Servers[k])
		}
		resp.Items = append(resp.Items, item)
	}
	for _, k := range slices.Sorted(maps.Keys(s.Invalid)) {
		resp.InvalidKeys = append(resp.InvalidKeys, &types.InvalidKey{Key: k, Reason: s.Invalid[k]})
	}
	return resp
}

// originalEtcd2Value undoes the original Merlin's etcd2 encoding: its
// etcd2 backend (its default) stored the protobuf as base64 text, which
// `etcdctl migrate` copies into the v3 store as it is. A protobuf value
// never looks like base64: a service or server begins with field 1's tag
// (0x0a), outside base64's alphabet.
func originalEtcd2Value(value []byte) []byte {
	if len(value) == 0 || len(value) > 1<<20 || value[0] == 0x0a {
		return value
	}
	decoded, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(value)))
	if err != nil {
		return value
	}
	return decoded
}

// DecodeService decodes and validates a service value stored at key (in
// protobuf, or the original Merlin's etcd2 base64 text of it).
func DecodeService(key string, value []byte, modRevision int64) (*types.VirtualService, error) {
	var svc types.VirtualService
	if err := proto.Unmarshal(originalEtcd2Value(value), &svc); err != nil {
		return nil, fmt.Errorf("value does not decode as a service: %w", err)
	}
	id := key[strings.LastIndexByte(key, '/')+1:]
	if svc.Id != id {
		return nil, fmt.Errorf("value has id %q under the key of service %q", svc.Id, id)
	}
	n, err := model.NormalizeService(&svc)
	if err != nil {
		return nil, fmt.Errorf("invalid service: %w", err)
	}
	n.Revision = modRevision
	return n, nil
}

// decodeStoredService decodes a stored service without validating it (but
// its ID): what an update starts from when the stored value is invalid.
func decodeStoredService(key string, value []byte, modRevision int64) (*types.VirtualService, error) {
	var svc types.VirtualService
	if err := proto.Unmarshal(originalEtcd2Value(value), &svc); err != nil {
		return nil, err
	}
	if svc.Id != key[strings.LastIndexByte(key, '/')+1:] || svc.Key == nil {
		return nil, fmt.Errorf("value has id %q or no key", svc.Id)
	}
	if svc.Config == nil {
		svc.Config = &types.VirtualService_Config{}
	}
	svc.Revision = modRevision
	return &svc, nil
}

// decodeStoredServer is decodeStoredService for a server of svc.
func decodeStoredServer(key string, value []byte, modRevision int64, svc *types.VirtualService) (*types.RealServer, error) {
	var srv types.RealServer
	if err := proto.Unmarshal(originalEtcd2Value(value), &srv); err != nil {
		return nil, err
	}
	if srv.ServiceID != svc.Id || srv.Key == nil || model.ServerKeyString(srv.Key) != key[strings.LastIndexByte(key, '/')+1:] {
		return nil, fmt.Errorf("value is not server %s of service %q", key[strings.LastIndexByte(key, '/')+1:], svc.Id)
	}
	if srv.Config == nil {
		srv.Config = &types.RealServer_Config{}
	}
	srv.Revision = modRevision
	return &srv, nil
}

// DecodeServer decodes and validates a server value stored at key against
// its service.
func DecodeServer(key string, value []byte, modRevision int64, svc *types.VirtualService) (*types.RealServer, error) {
	var srv types.RealServer
	if err := proto.Unmarshal(originalEtcd2Value(value), &srv); err != nil {
		return nil, fmt.Errorf("value does not decode as a server: %w", err)
	}
	if srv.ServiceID != svc.Id {
		return nil, fmt.Errorf("value has serviceID %q under service %q", srv.ServiceID, svc.Id)
	}
	n, err := model.NormalizeServer(&srv, svc)
	if err != nil {
		return nil, fmt.Errorf("invalid server: %w", err)
	}
	if want := key[strings.LastIndexByte(key, '/')+1:]; model.ServerKeyString(n.Key) != want {
		return nil, fmt.Errorf("value is server %s under the key of %s", model.ServerKeyString(n.Key), want)
	}
	n.Revision = modRevision
	return n, nil
}
