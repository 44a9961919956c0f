package store

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	"github.com/merlin-ipvs/merlin/model"
	"github.com/merlin-ipvs/merlin/types"
)

// MaxBatchChanges bounds the changes of one ApplyChanges call.
const MaxBatchChanges = 32

// maxTxnOps is etcd's default --max-txn-ops: the most operations, and
// the most comparisons, one transaction may hold.
const maxTxnOps = 128

// ErrBatchTooLarge: the batch needs more than one etcd transaction takes.
var ErrBatchTooLarge = errors.New("too large for one etcd transaction")

// batch is the desired state as a batch of changes leaves it: the services
// it touches are read from etcd once, changed in memory with the rules of
// the single calls, and written in one transaction that holds only if
// nothing it read has changed since.
type batch struct {
	ctx      context.Context
	s        *Store
	services map[string]*batchService
	vips     map[string]*batchVIP // by etcd key
	at       int                  // the change being applied
	attempt  int                  // 0: reads may be served by the local member
	name     func(int, error) error
	// unchangedRev is the revision of the object a change left as it was.
	unchangedRev int64
}

type batchService struct {
	rev     int64 // mod revision of the service key as read (0: absent)
	readRev int64 // etcd's revision at the read
	orig    *types.VirtualService
	svc     *types.VirtualService // as the batch leaves it; nil: none
	servers map[string]*batchServer
	keyed   int    // the change that gave the service its address (-1: none)
	invalid string // why the stored service is invalid, until an update makes it valid
}

type batchServer struct {
	orig    *types.RealServer // as read (nil: not in etcd)
	srv     *types.RealServer // as the batch leaves it; nil: none
	invalid string            // why the stored server is invalid, until an update makes it valid
}

type batchVIP struct {
	rev         int64
	orig, owner string
}

// ApplyBatch makes every change in one etcd transaction, or none; it
// returns the transaction's revision (0 when nothing needed changing).
func (s *Store) ApplyBatch(ctx context.Context, changes []*types.Change) (int64, error) {
	rev, _, err := s.apply(ctx, changes, inChange)
	return rev, err
}

// applyOne is a single call: a batch of one change, its errors not
// prefixed with the change's index. On a change that changes nothing it
// returns the object's revision.
func (s *Store) applyOne(ctx context.Context, ch *types.Change) (int64, error) {
	rev, b, err := s.apply(ctx, []*types.Change{ch}, func(_ int, err error) error { return err })
	if err == nil && rev == 0 && b != nil {
		rev = b.unchangedRev
	}
	return rev, err
}

// apply is the one write path: every change is checked on the state the
// earlier ones leave, then written in one transaction compared on every
// revision read; a concurrent change means reading again.
func (s *Store) apply(ctx context.Context, changes []*types.Change, name func(int, error) error) (int64, *batch, error) {
	for attempt := 0; attempt < casAttempts; attempt++ {
		b := &batch{ctx: ctx, s: s, services: map[string]*batchService{}, vips: map[string]*batchVIP{}, attempt: attempt, name: name}
		for i, ch := range changes {
			b.at = i
			if err := b.apply(ch); err != nil {
				return 0, nil, name(i, err)
			}
		}
		if err := b.assignVIPs(); err != nil {
			return 0, nil, err
		}
		rev, ok, err := b.commit()
		if err != nil || ok {
			return rev, b, err
		}
	}
	return 0, nil, fmt.Errorf("apply changes: gave up after %d concurrent changes: %w", casAttempts, ErrConflict)
}

// inChange names the change an error is about.
func inChange(i int, err error) error {
	var fe *model.FieldError
	if errors.As(err, &fe) {
		return &model.FieldError{Field: fmt.Sprintf("changes[%d].%s", i, fe.Field), Reason: fe.Reason}
	}
	return fmt.Errorf("changes[%d]: %w", i, err)
}

func (b *batch) apply(ch *types.Change) error {
	switch c := ch.GetChange().(type) {
	case *types.Change_CreateService:
		return b.createService(c.CreateService)
	case *types.Change_UpdateService:
		return b.updateService(c.UpdateService)
	case *types.Change_DeleteService:
		return b.deleteService(c.DeleteService)
	case *types.Change_CreateServer:
		return b.createServer(c.CreateServer)
	case *types.Change_UpdateServer:
		return b.updateServer(c.UpdateServer)
	case *types.Change_DeleteServer:
		return b.deleteServer(c.DeleteServer)
	}
	return model.FieldErrorf("change", "required: one of create_service, update_service, delete_service, create_server, update_server, delete_server")
}

// service reads a service and its servers once per batch.
func (b *batch) service(id string) (*batchService, error) {
	if err := model.ValidateID("id", id); err != nil {
		return nil, err
	}
	if bs := b.services[id]; bs != nil {
		return bs, nil
	}
	bs := &batchService{servers: map[string]*batchServer{}, keyed: -1}
	snap, err := b.s.readForWrite(b.ctx, id, b.attempt)
	switch {
	case errors.Is(err, ErrNotFound):
		resp, gerr := b.s.client.Get(b.ctx, b.s.markerKey(), clientv3.WithKeysOnly())
		if gerr != nil {
			return nil, fmt.Errorf("read service %q: %w", id, gerr)
		}
		bs.readRev = resp.Header.Revision
	case err != nil:
		return nil, err
	default:
		bs.rev, bs.readRev, bs.orig, bs.svc, bs.invalid = snap.service.Revision, snap.revision, snap.service, snap.service, snap.serviceInvalid
		for _, srv := range snap.servers {
			key := b.s.serverKey(id, srv.Key)
			bs.servers[key] = &batchServer{orig: srv, srv: srv, invalid: snap.serverInvalid[key]}
		}
	}
	b.services[id] = bs
	return bs, nil
}

func (b *batch) vip(k *types.VirtualService_Key) (*batchVIP, error) {
	key := b.s.vipKey(k)
	if v := b.vips[key]; v != nil {
		return v, nil
	}
	resp, err := b.s.client.Get(b.ctx, key)
	if err != nil {
		return nil, fmt.Errorf("read VIP %s: %w", model.VIPKey(k), err)
	}
	v := &batchVIP{}
	if len(resp.Kvs) > 0 {
		v.rev, v.orig = resp.Kvs[0].ModRevision, string(resp.Kvs[0].Value)
		v.owner = v.orig
	}
	b.vips[key] = v
	return v, nil
}

// assignVIPs works out the VIP index the batch leaves: every address held
// by one service at most (so a swap is two key updates), the services the
// batch does not touch keeping theirs.
func (b *batch) assignVIPs() error {
	final := map[string]string{} // VIP key → service
	for _, id := range slices.Sorted(maps.Keys(b.services)) {
		bs := b.services[id]
		if bs.orig != nil && bs.svc != nil && b.s.vipKey(bs.orig.Key) == b.s.vipKey(bs.svc.Key) {
			// The service keeps its VIP: its claim is not read or written
			// (a change of its key would have changed the service's
			// revision, which the transaction compares).
			key := b.s.vipKey(bs.svc.Key)
			if holder := final[key]; holder != "" {
				return b.name(max(bs.keyed, 0), fmt.Errorf("key: %s is already used by service %q: %w", model.VIPKey(bs.svc.Key), holder, ErrAlreadyExists))
			}
			final[key] = id
			continue
		}
		if bs.orig != nil {
			if _, err := b.vip(bs.orig.Key); err != nil {
				return err
			}
		}
		if bs.svc == nil {
			continue
		}
		v, err := b.vip(bs.svc.Key)
		if err != nil {
			return err
		}
		key := b.s.vipKey(bs.svc.Key)
		holder := final[key]
		if holder == "" && v.orig != "" && v.orig != id && b.services[v.orig] == nil {
			holder = v.orig // a service the batch leaves as it is
		}
		if holder != "" && holder != id {
			return b.name(max(bs.keyed, 0), fmt.Errorf("key: %s is already used by service %q: %w", model.VIPKey(bs.svc.Key), holder, ErrAlreadyExists))
		}
		final[key] = id
	}
	for key, v := range b.vips {
		switch owner, ok := final[key]; {
		case ok:
			v.owner = owner
		case v.orig != "" && b.services[v.orig] != nil:
			v.owner = "" // its holder left it or is gone
		}
	}
	return nil
}

func (b *batch) createService(in *types.VirtualService) error {
	if in.GetRevision() != 0 {
		return model.FieldErrorf("revision", "must not be set on create")
	}
	svc, err := model.NormalizeService(in)
	if err != nil {
		return err
	}
	bs, err := b.service(svc.Id)
	if err != nil {
		return err
	}
	if bs.svc != nil {
		return fmt.Errorf("service %q: %w", svc.Id, ErrAlreadyExists)
	}
	bs.svc, bs.keyed = svc, b.at
	return nil
}

func (b *batch) updateService(update *types.VirtualService) error {
	if update == nil {
		return model.FieldErrorf("service", "required")
	}
	bs, err := b.service(update.Id)
	if err != nil {
		return err
	}
	if bs.svc == nil {
		return fmt.Errorf("service %q: %w", update.Id, ErrNotFound)
	}
	next := mergeService(bs.svc, update)
	if update.Revision != 0 {
		if bs.rev != update.Revision {
			return fmt.Errorf("service %q is at revision %d, not %d: %w", update.Id, bs.rev, update.Revision, ErrConflict)
		}
		next = proto.Clone(update).(*types.VirtualService)
	}
	if next, err = model.NormalizeService(next); err != nil {
		return err
	}
	for _, srv := range bs.servers {
		if srv.srv == nil || srv.invalid != "" {
			continue // an invalid stored server stays as it was (listed invalid)
		}
		if _, err := model.NormalizeServer(srv.srv, next); err != nil {
			return model.FieldErrorf("service", "server %s would become invalid: %v", model.ServerName(srv.srv), err)
		}
	}
	if model.VIPKey(next.Key) != model.VIPKey(bs.svc.Key) {
		bs.keyed = b.at
	}
	bs.svc, b.unchangedRev, bs.invalid = next, bs.rev, ""
	return nil
}

func (b *batch) deleteService(req *types.DeleteServiceRequest) error {
	if req.GetRevision() < 0 {
		return model.FieldErrorf("revision", "%d: must not be negative", req.GetRevision())
	}
	bs, err := b.service(req.GetId())
	if err != nil {
		return err
	}
	if bs.svc == nil {
		return fmt.Errorf("service %q: %w", req.GetId(), ErrNotFound)
	}
	if req.GetRevision() != 0 && bs.rev != req.GetRevision() {
		return fmt.Errorf("service %q is at revision %d, not %d: %w", req.GetId(), bs.rev, req.GetRevision(), ErrConflict)
	}
	bs.svc = nil
	for _, srv := range bs.servers {
		srv.srv = nil
	}
	return nil
}

// server finds a server of the batch's state (nil entry: none).
func (b *batch) server(in *types.RealServer) (*batchService, string, error) {
	if in == nil {
		return nil, "", model.FieldErrorf("server", "required")
	}
	if err := model.ValidateID("serviceID", in.ServiceID); err != nil {
		return nil, "", err
	}
	if err := model.ValidateServerKey(in.Key); err != nil {
		return nil, "", err
	}
	bs, err := b.service(in.ServiceID)
	if err != nil {
		return nil, "", err
	}
	if bs.svc == nil {
		return nil, "", fmt.Errorf("service %q: %w", in.ServiceID, ErrNotFound)
	}
	return bs, b.s.serverKey(in.ServiceID, in.Key), nil
}

// valid refuses new or changed servers under a service stored invalid.
func (bs *batchService) valid(id string) error {
	if bs.invalid != "" {
		return model.FieldErrorf("serviceID", "service %q is stored invalid (%s): fix the service first", id, model.Truncate(bs.invalid, 200))
	}
	return nil
}

func (b *batch) createServer(in *types.RealServer) error {
	if in.GetRevision() != 0 {
		return model.FieldErrorf("revision", "must not be set on create")
	}
	bs, key, err := b.server(in)
	if err != nil {
		return err
	}
	if err := bs.valid(in.ServiceID); err != nil {
		return err
	}
	srv, err := model.NormalizeServer(in, bs.svc)
	if err != nil {
		return err
	}
	cur := bs.servers[key]
	if cur != nil && cur.srv != nil {
		return fmt.Errorf("server %s: %w", model.ServerName(srv), ErrAlreadyExists)
	}
	if cur == nil {
		cur = &batchServer{}
		bs.servers[key] = cur
	}
	cur.srv = srv
	return nil
}

func (b *batch) updateServer(update *types.RealServer) error {
	bs, key, err := b.server(update)
	if err != nil {
		return err
	}
	if err := bs.valid(update.ServiceID); err != nil {
		return err
	}
	cur := bs.servers[key]
	if cur == nil || cur.srv == nil {
		return fmt.Errorf("server %s: %w", model.ServerName(update), ErrNotFound)
	}
	next := mergeServer(cur.srv, update)
	if update.Revision != 0 {
		if cur.orig == nil || cur.orig.Revision != update.Revision {
			return fmt.Errorf("server %s is not at revision %d: %w", model.ServerName(update), update.Revision, ErrConflict)
		}
		next = proto.Clone(update).(*types.RealServer)
		next.Key = cur.srv.Key
	}
	if next, err = model.NormalizeServer(next, bs.svc); err != nil {
		return err
	}
	cur.srv, cur.invalid = next, ""
	if cur.orig != nil {
		b.unchangedRev = cur.orig.Revision
	}
	return nil
}

func (b *batch) deleteServer(in *types.RealServer) error {
	bs, key, err := b.server(in)
	if err != nil {
		return err
	}
	cur := bs.servers[key]
	if cur == nil || cur.srv == nil {
		return fmt.Errorf("server %s: %w", model.ServerName(in), ErrNotFound)
	}
	if in.Revision != 0 && (cur.orig == nil || cur.orig.Revision != in.Revision) {
		return fmt.Errorf("server %s is not at revision %d: %w", model.ServerName(in), in.Revision, ErrConflict)
	}
	cur.srv = nil
	return nil
}

// commit writes what the batch changed, if nothing it read changed since;
// ok is false when something did (the caller tries again).
func (b *batch) commit() (rev int64, ok bool, err error) {
	var conds []clientv3.Cmp
	var ops []clientv3.Op
	for _, id := range slices.Sorted(maps.Keys(b.services)) {
		c, o, err := b.serviceOps(id, b.services[id])
		if err != nil {
			return 0, false, err
		}
		conds, ops = append(conds, c...), append(ops, o...)
	}
	for _, key := range slices.Sorted(maps.Keys(b.vips)) {
		v := b.vips[key]
		conds = append(conds, clientv3.Compare(clientv3.ModRevision(key), "=", v.rev))
		switch {
		case v.owner == v.orig:
		case v.owner == "":
			ops = append(ops, clientv3.OpDelete(key))
		default:
			ops = append(ops, clientv3.OpPut(key, v.owner))
		}
	}
	if len(ops) == 0 {
		return 0, true, nil
	}
	if len(ops)+1 > maxTxnOps || len(conds) > maxTxnOps {
		return 0, false, fmt.Errorf("the changes need %d operations and %d comparisons, more than the %d of one etcd transaction: %w", len(ops)+1, len(conds), maxTxnOps, ErrBatchTooLarge)
	}
	resp, err := b.s.client.Txn(b.ctx).If(conds...).Then(append(ops, b.s.mark())...).Commit()
	if isNoSpace(err) && deletesOnly(ops) {
		// A full etcd takes deletes only, and the revision marker is a
		// put: delete without it (the desired revision shown lags until
		// the next write after the alarm is cleared).
		resp, err = b.s.client.Txn(b.ctx).If(conds...).Then(ops...).Commit()
	}
	if err == nil && resp.Succeeded {
		b.s.usage.pending.Add(putBytes(ops))
	}
	switch {
	case errors.Is(err, rpctypes.ErrGRPCTooManyOps), errors.Is(err, rpctypes.ErrTooManyOps), errors.Is(err, rpctypes.ErrGRPCRequestTooLarge), errors.Is(err, rpctypes.ErrRequestTooLarge):
		return 0, false, fmt.Errorf("apply changes: %v: %w", err, ErrBatchTooLarge)
	case err != nil:
		return 0, false, fmt.Errorf("apply changes: %w", err)
	}
	return resp.Header.Revision, resp.Succeeded, nil
}

func isNoSpace(err error) bool {
	return errors.Is(err, rpctypes.ErrNoSpace) || errors.Is(err, rpctypes.ErrGRPCNoSpace)
}

func deletesOnly(ops []clientv3.Op) bool {
	for _, op := range ops {
		if !op.IsDelete() {
			return false
		}
	}
	return true
}

// putBytes is what ops add to etcd's database, roughly: keys and values.
func putBytes(ops []clientv3.Op) int64 {
	var n int64
	for _, op := range ops {
		if op.IsPut() {
			n += int64(len(op.KeyBytes()) + len(op.ValueBytes()))
		}
	}
	return n
}

// serviceOps are the comparisons and writes of one service of the batch:
// compared on its revision and its servers' as read; a deleted service
// goes with its whole server prefix, whatever its size.
func (b *batch) serviceOps(id string, bs *batchService) ([]clientv3.Cmp, []clientv3.Op, error) {
	key := b.s.serviceKey(id)
	conds := []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(key), "=", bs.rev),
		clientv3.Compare(clientv3.ModRevision(b.s.serverPrefix(id)), "<", bs.readRev+1).WithPrefix()}
	var ops []clientv3.Op
	switch {
	case bs.svc == nil && bs.orig != nil:
		return conds, []clientv3.Op{clientv3.OpDelete(key), clientv3.OpDelete(b.s.serverPrefix(id), clientv3.WithPrefix())}, nil
	case bs.svc != nil && !sameStored(bs.orig, bs.svc):
		val, err := marshal(storedService(bs.svc))
		if err != nil {
			return nil, nil, err
		}
		ops = append(ops, clientv3.OpPut(key, val))
	}
	for _, k := range slices.Sorted(maps.Keys(bs.servers)) {
		srv := bs.servers[k]
		switch {
		case srv.srv == nil && srv.orig != nil:
			ops = append(ops, clientv3.OpDelete(k))
		case srv.srv != nil && (srv.orig == nil || !sameStored(srv.orig, srv.srv)):
			val, err := marshal(storedServer(srv.srv))
			if err != nil {
				return nil, nil, err
			}
			ops = append(ops, clientv3.OpPut(k, val))
		}
	}
	return conds, ops, nil
}

// sameStored: two objects are stored the same (revisions aside).
func sameStored[M interface {
	proto.Message
	GetRevision() int64
}](a, b M) bool {
	if !a.ProtoReflect().IsValid() || !b.ProtoReflect().IsValid() {
		return false
	}
	ca, cb := proto.Clone(a), proto.Clone(b)
	clearRevision(ca)
	clearRevision(cb)
	return proto.Equal(ca, cb)
}

func clearRevision(m proto.Message) {
	r := m.ProtoReflect()
	r.Clear(r.Descriptor().Fields().ByName("revision"))
}
