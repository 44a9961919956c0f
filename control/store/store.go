package store

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/merlin-ipvs/merlin/model"
	"github.com/merlin-ipvs/merlin/types"
)

// Store errors; match them with errors.Is.
var (
	ErrNotFound      = errors.New("not found")
	ErrAlreadyExists = errors.New("already exists")
	// ErrConflict: the object changed since the revision the caller gave.
	ErrConflict = errors.New("revision conflict")
	// ErrStoredInvalid: the object is in etcd but fails validation (state
	// the original Merlin accepted): an update that makes it valid works.
	ErrStoredInvalid = errors.New("stored invalid")
)

// casAttempts bounds the read-modify-write retries of writes that carry no
// revision of their own (a contended object makes them retry).
const casAttempts = 16

// listPageSize keeps each etcd range response well below its size limit.
const listPageSize = 1000

// Store keeps the desired state in etcd under a prefix (the layout:
// keys.go). Every write is one transaction compared on revisions, so no
// write is lost to a concurrent one and nothing is half-applied.
type Store struct {
	keys
	client *clientv3.Client
	quota  int64 // etcd's backend quota, for the write guard (quota.go)
	usage  storeUsage
}

// NewStore uses the client for keys under prefix (e.g. "/merlin").
func NewStore(client *clientv3.Client, prefix string) *Store {
	return &Store{keys: keys{prefix: strings.TrimSuffix(prefix, "/")}, client: client, quota: DefaultStoreQuota}
}

// Endpoints are the etcd endpoints the store talks to.
func (s *Store) Endpoints() []string { return s.client.Endpoints() }

// Prefix is the key prefix, without a trailing slash.
func (s *Store) Prefix() string { return s.prefix }

// mark is part of every write: its mod revision is the revision of the last
// change to the desired state, deletions included.
func (s *Store) mark() clientv3.Op { return clientv3.OpPut(s.markerKey(), "") }

// MaxStoredBytes bounds one stored object: far above what the field
// limits allow a service or a server, so only something that escaped them
// (an unknown field) reaches it.
const MaxStoredBytes = 64 << 10

// marshal encodes what is stored: never a field merlin does not know, never
// more than MaxStoredBytes.
func marshal(m proto.Message) (string, error) {
	m = proto.Clone(m)
	dropUnknown(m.ProtoReflect())
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return "", fmt.Errorf("encode %T: %w", m, err)
	}
	if len(b) > MaxStoredBytes {
		return "", model.FieldErrorf(string(m.ProtoReflect().Descriptor().Name()), "%d bytes to store: at most %d", len(b), MaxStoredBytes)
	}
	return string(b), nil
}

// dropUnknown clears the unknown fields of m and of every message in it.
func dropUnknown(m protoreflect.Message) {
	m.SetUnknown(nil)
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsList() && fd.Message() != nil:
			for i := range v.List().Len() {
				dropUnknown(v.List().Get(i).Message())
			}
		case fd.IsMap() && fd.MapValue().Message() != nil:
			v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
				dropUnknown(mv.Message())
				return true
			})
		case fd.Message() != nil && !fd.IsList() && !fd.IsMap():
			dropUnknown(v.Message())
		}
		return true
	})
}

// storedService is the service as written: the revision lives in etcd.
func storedService(s *types.VirtualService) *types.VirtualService {
	c := proto.Clone(s).(*types.VirtualService)
	c.Revision = 0
	return c
}

func storedServer(s *types.RealServer) *types.RealServer {
	c := proto.Clone(s).(*types.RealServer)
	c.Revision = 0
	return c
}

// snapshot reads one service and its servers at one revision.
type serviceSnapshot struct {
	revision int64 // of the read
	service  *types.VirtualService
	servers  []*types.RealServer
	invalid  []*types.InvalidKey
	// For a write (lenient read): why the stored service, or a stored
	// server by key, is invalid; they are in service and servers as stored.
	serviceInvalid string
	serverInvalid  map[string]string
}

// readForWrite reads a service to change it. The first attempt reads from
// the local member without a quorum round (serializable): the write that
// follows is compared on revisions, so a stale read only costs a retry,
// and the retries, like a "not found", read linearizably.
func (s *Store) readForWrite(ctx context.Context, id string, attempt int) (*serviceSnapshot, error) {
	if attempt == 0 {
		snap, err := s.read(ctx, id, true, clientv3.WithSerializable())
		if !errors.Is(err, ErrNotFound) {
			return snap, err
		}
	}
	return s.read(ctx, id, true)
}

func (s *Store) readService(ctx context.Context, id string) (*serviceSnapshot, error) {
	return s.read(ctx, id, false)
}

// read reads a service and its servers. lenient (for a write) keeps
// objects stored invalid as they are, with why, so that an update that
// makes one valid can succeed: the original Merlin accepted more.
func (s *Store) read(ctx context.Context, id string, lenient bool, opts ...clientv3.OpOption) (*serviceSnapshot, error) {
	resp, err := s.client.Txn(ctx).Then(
		clientv3.OpGet(s.serviceKey(id), opts...),
		clientv3.OpGet(s.serverPrefix(id), append([]clientv3.OpOption{clientv3.WithPrefix()}, opts...)...),
	).Commit()
	if err != nil {
		return nil, fmt.Errorf("read service %q: %w", id, err)
	}
	snap := &serviceSnapshot{revision: resp.Header.Revision}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 0 {
		return nil, fmt.Errorf("service %q: %w", id, ErrNotFound)
	}
	svc, err := DecodeService(string(kvs[0].Key), kvs[0].Value, kvs[0].ModRevision)
	if err != nil {
		raw, rerr := decodeStoredService(string(kvs[0].Key), kvs[0].Value, kvs[0].ModRevision)
		if !lenient || rerr != nil {
			return nil, fmt.Errorf("service %q is stored but unusable (%w): %w", id, ErrStoredInvalid, err)
		}
		svc, snap.serviceInvalid = raw, err.Error()
	}
	snap.service, snap.serverInvalid = svc, map[string]string{}
	for _, kv := range resp.Responses[1].GetResponseRange().Kvs {
		srv, err := DecodeServer(string(kv.Key), kv.Value, kv.ModRevision, svc)
		if err != nil && lenient {
			if raw, rerr := decodeStoredServer(string(kv.Key), kv.Value, kv.ModRevision, svc); rerr == nil {
				srv, snap.serverInvalid[string(kv.Key)] = raw, err.Error()
				err = nil
			}
		}
		if err != nil {
			snap.invalid = append(snap.invalid, &types.InvalidKey{Key: string(kv.Key), Reason: err.Error()})
			continue
		}
		snap.servers = append(snap.servers, srv)
	}
	return snap, nil
}

// GetService returns one service with its servers, read at one revision.
func (s *Store) GetService(ctx context.Context, id string) (*types.ListResponse_Item, error) {
	if err := model.ValidateID("id", id); err != nil {
		return nil, err
	}
	snap, err := s.readService(ctx, id)
	if err != nil {
		return nil, err
	}
	return &types.ListResponse_Item{Service: snap.service, Servers: snap.servers}, nil
}

// mergeService lays the fields an update sets over the stored service.
func mergeService(cur, update *types.VirtualService) *types.VirtualService {
	next := proto.Clone(cur).(*types.VirtualService)
	if update.Key != nil {
		// A key is one value (address, port, protocol or fwmark): given,
		// it replaces the old one; the VIP index moves in the same
		// transaction.
		next.Key = proto.Clone(update.Key).(*types.VirtualService_Key)
	}
	if u := update.Config; u != nil {
		if len(u.Flags) > 0 {
			// Flags given replace the old ones. persistent and one-packet
			// have fields of their own, which stay unless the update sets
			// them: an original Merlin client (scheduler flags only) cannot
			// express them and must not clear them; flags naming them turn
			// them on (model.ValidateService derives the list again).
			next.Config.Flags = nil
		}
		model.MergePresent(next.Config, u)
		if u.PersistenceTimeout != nil && u.PersistenceTimeout.Value == 0 {
			next.Config.Flags = removeFlag(next.Config.Flags, "persistent")
			next.Config.PersistenceNetmask = nil
		}
		if u.OnePacket != nil && !u.OnePacket.Value {
			next.Config.Flags = removeFlag(next.Config.Flags, "one-packet")
		}
	}
	if d := update.Defaults; d != nil {
		if next.Defaults == nil {
			next.Defaults = &types.VirtualService_ServerDefaults{}
		}
		model.MergePresent(next.Defaults, d)
	}
	if a := update.Announce; a != nil {
		if next.Announce == nil {
			next.Announce = &types.Announce{}
		}
		model.MergePresent(next.Announce, a)
	}
	if p := update.PassiveHealth; p != nil {
		if next.PassiveHealth == nil {
			next.PassiveHealth = &types.PassiveHealth{}
		}
		model.MergePresent(next.PassiveHealth, p)
	}
	if t := update.HealthyThreshold; t != nil {
		// One setting whose zero values mean something (KEEP_SERVING, no
		// sorry servers): given, it replaces the stored one; an empty one
		// removes it.
		next.HealthyThreshold = proto.Clone(t).(*types.HealthyThreshold)
	}
	return next
}

func removeFlag(flags []string, name string) []string {
	var out []string
	for _, f := range flags {
		if model.CanonicalFlag(f) != name {
			out = append(out, f)
		}
	}
	return out
}

func mergeServer(prev, update *types.RealServer) *types.RealServer {
	next := proto.Clone(prev).(*types.RealServer)
	if u := update.Config; u != nil {
		model.MergePresent(next.Config, u)
	}
	if u := update.HealthCheck; u != nil {
		if next.HealthCheck == nil {
			next.HealthCheck = &types.RealServer_HealthCheck{}
		}
		model.MergePresent(next.HealthCheck, u)
	}
	return next
}

// List reads every service and server at one revision, page by page.
// Values merlin cannot use are left out and reported in InvalidKeys.
func (s *Store) List(ctx context.Context) (*types.ListResponse, error) {
	state, err := s.ListState(ctx)
	if err != nil {
		return nil, err
	}
	return state.ListResponse(), nil
}

// ListState reads the whole desired state at the current revision.
func (s *Store) ListState(ctx context.Context) (*State, error) {
	return s.ListStateAt(ctx, 0)
}

// ListStateAt reads the whole desired state at revision rev (0: current).
// A compacted revision fails with rpctypes.ErrCompacted.
func (s *Store) ListStateAt(ctx context.Context, rev int64) (*State, error) {
	svcKVs, rev, err := s.rangeAll(ctx, s.servicesPrefix(), rev)
	if err != nil {
		return nil, err
	}
	srvKVs, _, err := s.rangeAll(ctx, s.serversPrefix(), rev)
	if err != nil {
		return nil, err
	}
	st := NewState(s.prefix, rev)
	n := 0
	for _, kvs := range [][]keyValue{svcKVs, srvKVs} { // services first: servers decode against them
		for _, kv := range kvs {
			if n++; n%512 == 0 {
				runtime.Gosched() // decoding a large table must not hold up the watch and the agent
			}
			st.put(string(kv.Key), kv.Value, kv.ModRevision)
		}
	}
	if err := s.listSettings(ctx, st, rev); err != nil {
		return nil, err
	}
	return st, nil
}

// listSettings reads into st what is not a service or a server: the
// confirmed deletions, the drains, the server drains, the BGP settings.
func (s *Store) listSettings(ctx context.Context, st *State, rev int64) error {
	confirm, err := s.client.Get(ctx, s.confirmKey(), clientv3.WithRev(rev))
	if err != nil {
		return fmt.Errorf("list %s at revision %d: %w", s.confirmKey(), rev, err)
	}
	for _, kv := range confirm.Kvs {
		st.put(string(kv.Key), kv.Value, kv.ModRevision)
	}
	if err := s.listDrains(ctx, st, rev); err != nil {
		return err
	}
	if err := s.listServerDrains(ctx, st, rev); err != nil {
		return err
	}
	return s.listBGP(ctx, st, rev)
}

type keyValue struct {
	Key, Value  []byte
	ModRevision int64
}

// rangeAll reads every key under prefix at revision rev (0: the current
// one, which it returns) in pages of listPageSize.
func (s *Store) rangeAll(ctx context.Context, prefix string, rev int64) ([]keyValue, int64, error) {
	var out []keyValue
	rev, err := s.rangePages(ctx, prefix, rev, false, func(kvs []*mvccpb.KeyValue) error {
		for _, kv := range kvs {
			out = append(out, keyValue{Key: kv.Key, Value: kv.Value, ModRevision: kv.ModRevision})
		}
		return nil
	})
	return out, rev, err
}

// rangePages gives page every page of keys under prefix at revision rev
// (0: the current one, which it returns), listPageSize keys each, with
// their values unless keysOnly.
func (s *Store) rangePages(ctx context.Context, prefix string, rev int64, keysOnly bool, page func([]*mvccpb.KeyValue) error) (int64, error) {
	end := clientv3.GetPrefixRangeEnd(prefix)
	from := prefix
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(listPageSize)}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		if keysOnly {
			opts = append(opts, clientv3.WithKeysOnly())
		}
		pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		resp, err := s.client.Get(pctx, from, opts...)
		cancel()
		if err != nil {
			return 0, fmt.Errorf("list %s at revision %d: %w", prefix, rev, err)
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		if err := page(resp.Kvs); err != nil {
			return 0, err
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return rev, nil
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// DesiredRevision is the revision of the last change made through the
// Store (0 before any).
func (s *Store) DesiredRevision(ctx context.Context) (int64, error) {
	resp, err := s.client.Get(ctx, s.markerKey())
	if err != nil {
		return 0, fmt.Errorf("read desired revision: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return 0, nil
	}
	return resp.Kvs[0].ModRevision, nil
}

// NodeLease keeps a node's status key in etcd while it is renewed: the
// key goes when the node stops renewing it.
type NodeLease struct {
	id    clientv3.LeaseID
	alive <-chan *clientv3.LeaseKeepAliveResponse
}

// GrantNodeLease grants a lease of ttl seconds, renewed until keep ends.
func (s *Store) GrantNodeLease(ctx, keep context.Context, ttl int64) (*NodeLease, error) {
	lease, err := s.client.Grant(ctx, ttl)
	if err != nil {
		return nil, fmt.Errorf("grant lease: %w", err)
	}
	alive, err := s.client.KeepAlive(keep, lease.ID)
	if err != nil {
		return nil, fmt.Errorf("keep lease alive: %w", err)
	}
	return &NodeLease{id: lease.ID, alive: alive}, nil
}

// Renewed delivers each renewal and is closed when the lease is lost.
func (l *NodeLease) Renewed() <-chan *clientv3.LeaseKeepAliveResponse { return l.alive }

func (l *NodeLease) String() string { return fmt.Sprintf("lease %x", int64(l.id)) }

// PutNodeStatus publishes a node's status under its lease.
func (s *Store) PutNodeStatus(ctx context.Context, lease *NodeLease, st *types.NodeStatus) error {
	if err := model.ValidateID("node", st.Node); err != nil {
		return err
	}
	val, err := marshal(st)
	if err != nil {
		return err
	}
	if _, err := s.client.Put(ctx, s.nodePrefix()+st.Node, val, clientv3.WithLease(lease.id)); err != nil {
		return fmt.Errorf("publish status of node %s: %w", st.Node, err)
	}
	return nil
}

// NodeStatuses lists the status of every live node, by name.
func (s *Store) NodeStatuses(ctx context.Context) ([]*types.NodeStatus, error) {
	resp, err := s.client.Get(ctx, s.nodePrefix(), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("read node status: %w", err)
	}
	var out []*types.NodeStatus
	for _, kv := range resp.Kvs {
		var st types.NodeStatus
		if err := proto.Unmarshal(kv.Value, &st); err != nil {
			out = append(out, &types.NodeStatus{Node: strings.TrimPrefix(string(kv.Key), s.nodePrefix()), LastResult: "status does not decode: " + err.Error()})
			continue
		}
		out = append(out, &st)
	}
	return out, nil
}

// ConfirmDeletions records that nodes may apply deletions up to revision.
func (s *Store) ConfirmDeletions(ctx context.Context, revision int64) error {
	if revision <= 0 {
		return model.FieldErrorf("revision", "must be positive")
	}
	if _, err := s.client.Put(ctx, s.confirmKey(), strconv.FormatInt(revision, 10)); err != nil {
		return fmt.Errorf("confirm deletions: %w", err)
	}
	return nil
}

// importTxnOps keeps each import transaction under etcd's default limit
// of 128 operations.
const importTxnOps = 120

// importItem is one service of an import with its servers: created only
// if neither it nor its VIP exists.
type importItem struct {
	conds []clientv3.Cmp
	ops   []clientv3.Op
}

func (s *Store) importOps(i int, item *types.ListResponse_Item) (importItem, error) {
	svc, err := model.NormalizeService(item.GetService())
	if err != nil {
		return importItem{}, fmt.Errorf("services[%d]: %w", i, err)
	}
	val, err := marshal(storedService(svc))
	if err != nil {
		return importItem{}, err
	}
	key, vip := s.serviceKey(svc.Id), s.vipKey(svc.Key)
	p := importItem{
		conds: []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(key), "=", 0), clientv3.Compare(clientv3.CreateRevision(vip), "=", 0)},
		ops:   []clientv3.Op{clientv3.OpPut(key, val), clientv3.OpPut(vip, svc.Id)},
	}
	for j, in := range item.GetServers() {
		in = proto.Clone(in).(*types.RealServer)
		in.ServiceID = svc.Id
		srv, err := model.NormalizeServer(in, svc)
		if err != nil {
			return importItem{}, fmt.Errorf("services[%d].servers[%d]: %w", i, j, err)
		}
		v, err := marshal(storedServer(srv))
		if err != nil {
			return importItem{}, err
		}
		p.ops = append(p.ops, clientv3.OpPut(s.serverKey(svc.Id, srv.Key), v))
	}
	return p, nil
}

// Import creates many services with their servers, validated like
// CreateService and CreateServer, in transactions of up to importTxnOps
// keys (a restore, or a benchmark's table). Each transaction creates whole
// services only and fails, leaving earlier ones in place, if any of its
// keys or VIPs already exists. It returns how many services it created.
func (s *Store) Import(ctx context.Context, items []*types.ListResponse_Item) (int, error) {
	var batch []importItem
	n, created := 0, 0
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		var conds []clientv3.Cmp
		var ops []clientv3.Op
		for _, p := range batch {
			conds, ops = append(conds, p.conds...), append(ops, p.ops...)
		}
		ops = append(ops, s.mark())
		resp, err := s.client.Txn(ctx).If(conds...).Then(ops...).Commit()
		if err != nil {
			return fmt.Errorf("import: %w", err)
		}
		if !resp.Succeeded {
			return fmt.Errorf("import: a service, server or VIP of services %d to %d already exists: %w", created+1, created+len(batch), ErrAlreadyExists)
		}
		created += len(batch)
		batch, n = batch[:0], 0
		return nil
	}
	for i, item := range items {
		p, err := s.importOps(i, item)
		if err != nil {
			return created, err
		}
		if len(p.ops)+1 > importTxnOps {
			return created, fmt.Errorf("services[%d]: %d servers do not fit one transaction of %d operations", i, len(item.GetServers()), importTxnOps)
		}
		if n+len(p.ops)+1 > importTxnOps {
			if err := flush(); err != nil {
				return created, err
			}
		}
		batch = append(batch, p)
		n += len(p.ops)
	}
	return created, flush()
}
