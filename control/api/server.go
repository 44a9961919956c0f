package api

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/merlin-ipvs/merlin/control/store"
	"github.com/merlin-ipvs/merlin/model"
	"github.com/merlin-ipvs/merlin/types"
)

// Server implements the types.Merlin gRPC service on top of the Store.
// Every request is validated before anything reaches etcd.
type Server struct {
	types.UnimplementedMerlinServer
	store  *store.Store
	log    *slog.Logger
	stats  StatsSource
	health *health.Server // the gRPC health service, kept in step by SetServing
	// watchBuffer bounds the bytes of events waiting for one Watch client.
	watchBuffer int
	roles       Roles
	// snapshots bounds the whole-table reads (List, a Watch's snapshot)
	// in memory at once: each holds the table while it is sent.
	snapshots chan struct{}
	watchers  chan struct{} // open Watch streams: each holds the table
	// snapshotStall: a Watch client reading nothing of its snapshot for
	// this long is cut off.
	snapshotStall time.Duration
	maxMessage    int // what one response may carry (NewGRPCServer sets it)
}

// DefaultConcurrentSnapshots is how many whole-table reads run at once;
// DefaultMaxWatchers how many Watch streams may be open (each follows its
// own copy of the table).
const (
	DefaultConcurrentSnapshots = 4
	DefaultMaxWatchers         = 64
)

// NewServer serves the API from store.
func NewServer(store *store.Store, log *slog.Logger) *Server {
	return &Server{store: store, log: log, health: health.NewServer(), watchBuffer: DefaultWatchBuffer,
		snapshots: make(chan struct{}, DefaultConcurrentSnapshots), watchers: make(chan struct{}, DefaultMaxWatchers), maxMessage: 16 << 20, snapshotStall: 30 * time.Second}
}

// snapshot waits for one of the whole-table reads that may run at once;
// release gives it back.
func (s *Server) snapshot(ctx context.Context) (release func(), err error) {
	select {
	case s.snapshots <- struct{}{}:
		return func() { <-s.snapshots }, nil
	case <-ctx.Done():
		return nil, status.Errorf(codes.ResourceExhausted, "%d whole-table reads (List, Watch snapshots) are running: try again", cap(s.snapshots))
	}
}

// SetWatchBuffer bounds the bytes of events waiting for one Watch client.
func (s *Server) SetWatchBuffer(n int) { s.watchBuffer = n }

// SetSnapshotStall is how long a Watch client may read nothing of its
// snapshot before it is cut off (default 30 s).
func (s *Server) SetSnapshotStall(d time.Duration) { s.snapshotStall = d }

var errSlowWatcher = errors.New("watch client too slow")

// GRPCOptions bound what one client can make the server hold.
type GRPCOptions struct {
	TLS                  *tls.Config // nil: plaintext
	MaxMessageBytes      int         // default 16 MiB
	MaxConcurrentStreams uint32      // per connection; default 256
	// IdleTimeout closes a connection without streams for that long
	// (default 5 min); a connection that has not finished its handshake
	// within 10 s is closed too.
	IdleTimeout time.Duration
}

// NewGRPCServer returns a gRPC server with the Merlin service, the standard
// health service (serving while etcd answers: see SetServing) and server
// reflection.
func NewGRPCServer(api *Server, o GRPCOptions) *grpc.Server {
	if o.MaxMessageBytes == 0 {
		o.MaxMessageBytes = 16 << 20
	}
	api.maxMessage = o.MaxMessageBytes
	if o.MaxConcurrentStreams == 0 {
		o.MaxConcurrentStreams = 256
	}
	if o.IdleTimeout == 0 {
		o.IdleTimeout = 5 * time.Minute
	}
	opts := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(o.MaxMessageBytes),
		grpc.MaxSendMsgSize(o.MaxMessageBytes),
		grpc.MaxConcurrentStreams(o.MaxConcurrentStreams),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionIdle: o.IdleTimeout, Time: 2 * time.Minute, Timeout: 20 * time.Second}),
		grpc.ConnectionTimeout(10 * time.Second),
		serverCodec(),
		grpc.ChainUnaryInterceptor(api.auditUnary, api.recoverUnary, api.authorizeUnary, rejectUndecodableUnary, api.logUnary, api.quotaGuard),
		grpc.ChainStreamInterceptor(api.recoverStream, api.authorizeStream, rejectUndecodableStream),
	}
	if o.TLS != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(o.TLS)))
	}
	g := grpc.NewServer(opts...)
	types.RegisterMerlinServer(g, api)
	healthpb.RegisterHealthServer(g, api.health)
	reflection.Register(g)
	return g
}

// SetServing sets the gRPC health status: serving while etcd answers
// (store.Prober says when that changes).
func (s *Server) SetServing(serving bool) {
	st := healthpb.HealthCheckResponse_SERVING
	if !serving {
		st = healthpb.HealthCheckResponse_NOT_SERVING
	}
	s.health.SetServingStatus("", st)
	s.health.SetServingStatus("types.Merlin", st)
}

// StopHealth answers NOT_SERVING from now on: the server is stopping.
func (s *Server) StopHealth() { s.health.Shutdown() }

func (s *Server) logUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	hctx, budget, cancel := storeBudget(ctx)
	defer cancel()
	resp, err := handler(hctx, req)
	if err != nil && hctx.Err() != nil && ctx.Err() == nil {
		// Our budget ran out, not the client's: say why, while it listens.
		err = status.Errorf(codes.Unavailable, "etcd (%s) did not answer within %s: unreachable, or without a leader", strings.Join(s.store.Endpoints(), ","), budget.Round(100*time.Millisecond))
	}
	if err != nil {
		err = toStatus(err)
	}
	if err != nil {
		level := slog.LevelInfo
		if c := status.Code(err); c == codes.Internal || c == codes.Unavailable || c == codes.Unknown {
			level = slog.LevelError
		}
		s.log.Log(ctx, level, "request failed", "method", info.FullMethod, "code", status.Code(err).String(), "error", status.Convert(err).Message(), "duration", time.Since(start))
	} else {
		s.log.Debug("request", "method", info.FullMethod, "duration", time.Since(start))
	}
	return resp, err
}

// storeBudget is the time a request may wait for etcd: the client's
// deadline less a margin to answer in (a tenth, at most a second), or 30 s
// for a client without one.
func storeBudget(ctx context.Context) (context.Context, time.Duration, context.CancelFunc) {
	budget := 30 * time.Second
	if d, ok := ctx.Deadline(); ok {
		left := time.Until(d)
		budget = left - min(time.Second, left/10)
	}
	ctx, cancel := context.WithTimeout(ctx, budget)
	return ctx, budget, cancel
}

// toStatus maps store errors to gRPC codes: the field of a bad argument is
// named in the message and in a BadRequest detail.
func toStatus(err error) error {
	if _, ok := status.FromError(err); ok && !errors.Is(err, context.Canceled) {
		return err
	}
	var fe *model.FieldError
	switch {
	case errors.Is(err, store.ErrStoredInvalid):
		return status.Error(codes.FailedPrecondition, err.Error()+": an update without a revision that makes it valid works (meradm status says how)")
	case errors.As(err, &fe):
		st := status.New(codes.InvalidArgument, "invalid "+fe.Error())
		if d, derr := st.WithDetails(&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: fe.Field, Description: fe.Reason}}}); derr == nil {
			st = d
		}
		return st.Err()
	case errors.Is(err, store.ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, store.ErrAlreadyExists):
		return status.Error(codes.AlreadyExists, err.Error())
	case errors.Is(err, store.ErrConflict):
		return status.Error(codes.Aborted, err.Error())
	case errors.Is(err, store.ErrBatchTooLarge):
		return status.Error(codes.OutOfRange, err.Error()+": apply the changes in smaller batches")
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	case errors.Is(err, rpctypes.ErrFutureRev), errors.Is(err, rpctypes.ErrGRPCFutureRev):
		return status.Error(codes.OutOfRange, "revision is in the future: etcd has not reached it")
	case errors.Is(err, rpctypes.ErrNoSpace), errors.Is(err, rpctypes.ErrGRPCNoSpace):
		return status.Error(codes.ResourceExhausted, "etcd is full (NOSPACE alarm): it refuses every write until compacted, defragmented and disarmed (README: \"When etcd is full\")")
	case errors.Is(err, rpctypes.ErrNoLeader), errors.Is(err, rpctypes.ErrTimeout), errors.Is(err, rpctypes.ErrGRPCNoLeader):
		return status.Error(codes.Unavailable, "store unavailable: "+err.Error())
	}
	// An etcd client error carrying a gRPC status inside the wrap.
	var se interface{ GRPCStatus() *status.Status }
	if errors.As(err, &se) {
		if c := se.GRPCStatus().Code(); c == codes.Unavailable || c == codes.DeadlineExceeded {
			return status.Error(codes.Unavailable, "store unavailable: "+err.Error())
		}
	}
	return status.Error(codes.Internal, err.Error())
}

var empty = &emptypb.Empty{}

func (s *Server) CreateService(ctx context.Context, svc *types.VirtualService) (*emptypb.Empty, error) {
	if svc = unmeant(ctx, svc); svc.GetRevision() != 0 {
		return nil, toStatus(model.FieldErrorf("revision", "must not be set on create"))
	}
	rev, err := s.store.CreateService(ctx, svc)
	if err != nil {
		return nil, err
	}
	s.log.Info("created service", "id", svc.Id, "revision", rev)
	return empty, nil
}

// unmeant drops a revision the client did not mean (see
// types.RevisionsHeader): an original Merlin client echoes back the
// revisions of what it listed without knowing them.
func unmeant[M interface {
	proto.Message
	GetRevision() int64
}](ctx context.Context, m M) M {
	if types.RevisionsMeant(ctx) || m.GetRevision() == 0 {
		return m
	}
	c := proto.Clone(m).(M)
	c.ProtoReflect().Clear(c.ProtoReflect().Descriptor().Fields().ByName("revision"))
	return c
}

func (s *Server) UpdateService(ctx context.Context, svc *types.VirtualService) (*emptypb.Empty, error) {
	svc = unmeant(ctx, svc)
	rev, err := s.store.UpdateService(ctx, svc)
	if err != nil {
		return nil, err
	}
	s.log.Info("updated service", "id", svc.Id, "revision", rev)
	return empty, nil
}

func (s *Server) DeleteService(ctx context.Context, id *wrapperspb.StringValue) (*emptypb.Empty, error) {
	return s.DeleteServiceAtRevision(ctx, &types.DeleteServiceRequest{Id: id.GetValue()})
}

func (s *Server) DeleteServiceAtRevision(ctx context.Context, req *types.DeleteServiceRequest) (*emptypb.Empty, error) {
	if req.GetRevision() < 0 {
		return nil, model.FieldErrorf("revision", "%d: must not be negative", req.GetRevision())
	}
	rev, err := s.store.DeleteService(ctx, req.GetId(), req.GetRevision())
	if err != nil {
		return nil, err
	}
	s.log.Info("deleted service", "id", req.GetId(), "revision", rev)
	return empty, nil
}

func (s *Server) CreateServer(ctx context.Context, srv *types.RealServer) (*emptypb.Empty, error) {
	if srv = unmeant(ctx, srv); srv.GetRevision() != 0 {
		return nil, toStatus(model.FieldErrorf("revision", "must not be set on create"))
	}
	rev, err := s.store.CreateServer(ctx, srv)
	if err != nil {
		return nil, err
	}
	s.log.Info("created server", "server", model.ServerName(srv), "revision", rev)
	return empty, nil
}

func (s *Server) UpdateServer(ctx context.Context, srv *types.RealServer) (*emptypb.Empty, error) {
	srv = unmeant(ctx, srv)
	rev, err := s.store.UpdateServer(ctx, srv)
	if err != nil {
		return nil, err
	}
	s.log.Info("updated server", "server", model.ServerName(srv), "revision", rev)
	return empty, nil
}

func (s *Server) DeleteServer(ctx context.Context, srv *types.RealServer) (*emptypb.Empty, error) {
	srv = unmeant(ctx, srv)
	rev, err := s.store.DeleteServer(ctx, srv)
	if err != nil {
		return nil, err
	}
	s.log.Info("deleted server", "server", model.ServerName(srv), "revision", rev)
	return empty, nil
}

func (s *Server) List(ctx context.Context, _ *emptypb.Empty) (*types.ListResponse, error) {
	release, err := s.snapshot(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	resp, err := s.store.List(ctx)
	if err != nil {
		return nil, err
	}
	for _, item := range resp.Items {
		item.Servers = withHealthChecks(item.Servers)
	}
	if n := proto.Size(resp); n > s.maxMessage {
		return nil, status.Errorf(codes.ResourceExhausted, "the table is %d bytes in one List, more than the %d one message may carry (-max-message-bytes): list it a page at a time with ListPage (meradm does)", n, s.maxMessage)
	}
	return resp, nil
}

// ListPage is List a page at a time, at one revision.
func (s *Server) ListPage(ctx context.Context, req *types.ListPageRequest) (*types.ListResponse, error) {
	if id := req.GetAfterId(); id != "" {
		if err := model.ValidateID("after_id", id); err != nil {
			return nil, err
		}
	}
	if req.GetRevision() < 0 {
		return nil, model.FieldErrorf("revision", "%d: must not be negative", req.GetRevision())
	}
	size := int(req.GetMaxBytes())
	switch {
	case size == 0:
		size = store.DefaultPageBytes
	case size > store.MaxPageBytes:
		return nil, model.FieldErrorf("max_bytes", "%d: at most %d", size, store.MaxPageBytes)
	}
	resp, err := s.store.ListPage(ctx, req.GetAfterId(), req.GetRevision(), min(size, s.maxMessage/2))
	if errors.Is(err, rpctypes.ErrCompacted) {
		return nil, status.Errorf(codes.OutOfRange, "revision %d is compacted: list again from the first page", req.GetRevision())
	}
	if err != nil {
		return nil, err
	}
	for _, item := range resp.Items {
		item.Servers = withHealthChecks(item.Servers)
	}
	return resp, nil
}

func (s *Server) GetService(ctx context.Context, id *wrapperspb.StringValue) (*types.ListResponse_Item, error) {
	item, err := s.store.GetService(ctx, id.GetValue())
	if err != nil {
		return nil, err
	}
	item.Servers = withHealthChecks(item.Servers)
	return item, nil
}

// withHealthChecks gives every server a health-check message, empty when it
// has none, as the original Merlin always did: its clients read
// health_check.endpoint without a nil check. Servers are copied, not
// changed (the store's are shared).
func withHealthChecks(servers []*types.RealServer) []*types.RealServer {
	out := servers[:0:0]
	for _, srv := range servers {
		if srv.HealthCheck == nil {
			c := proto.Clone(srv).(*types.RealServer)
			c.HealthCheck = &types.RealServer_HealthCheck{}
			srv = c
		}
		out = append(out, srv)
	}
	return out
}

// Watch streams the state and then its changes; see types.proto.
func (s *Server) Watch(req *types.WatchRequest, stream grpc.ServerStreamingServer[types.WatchEvent]) error {
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	from := req.GetFromRevision()
	if from < 0 {
		return toStatus(model.FieldErrorf("from_revision", "must not be negative"))
	}
	select {
	case s.watchers <- struct{}{}:
		defer func() { <-s.watchers }()
	default:
		return status.Errorf(codes.ResourceExhausted, "%d Watch streams are open, the most this node serves (each holds the table): try again later or watch another node", cap(s.watchers))
	}
	q := newSendQueue(stream, s.watchBuffer)
	go q.run(ctx)
	defer func() {
		cancel()
		// A client cut off for not reading may hold its Send on flow
		// control: it fails, and the sender ends, once this handler has
		// returned. Any other sender ends with ctx.
		if !q.wasCutOff() {
			<-q.stopped
		}
	}()
	state, err := s.watchStart(ctx, q, from)
	if err != nil {
		return err
	}
	if from == 0 {
		from = state.Revision + 1
	}
	return s.follow(ctx, q, state, from)
}

// watchStart is the state a watch follows from: a snapshot sent first
// (from 0), or the state just before from, which decodes the events after.
func (s *Server) watchStart(ctx context.Context, q *sendQueue, from int64) (*store.State, error) {
	if from != 0 {
		state, err := s.store.ListStateAt(ctx, from-1)
		if errors.Is(err, rpctypes.ErrCompacted) {
			return nil, status.Errorf(codes.OutOfRange, "revision %d is compacted: watch from 0 (a fresh snapshot)", from)
		}
		return state, toStatusOrNil(err)
	}
	release, err := s.snapshot(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	state, err := s.store.ListState(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	nodes, err := s.store.NodeStatuses(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	for ev := range snapshotEvents(state, nodes) {
		if !q.pushWait(ctx, ev, s.snapshotStall) {
			return nil, s.snapshotCut(q)
		}
	}
	if !q.drained(ctx, s.snapshotStall) {
		return nil, s.snapshotCut(q)
	}
	return state, nil
}

// snapshotCut is why a snapshot stopped: the client's Send failed, or it
// read nothing for snapshotStall.
func (s *Server) snapshotCut(q *sendQueue) error {
	if err := q.sendErr(); err != nil {
		return err
	}
	q.cutOff()
	s.log.Warn("watch client read nothing of its snapshot: cut off", "stall", s.snapshotStall)
	return status.Errorf(codes.ResourceExhausted, "watch client read nothing of its snapshot for %s: cut off", s.snapshotStall)
}

// snapshotEvents are a watch's first events: every service and server,
// every node's status, then SYNCED.
func snapshotEvents(state *store.State, nodes []*types.NodeStatus) func(yield func(*types.WatchEvent) bool) {
	return func(yield func(*types.WatchEvent) bool) {
		for _, item := range state.ListResponse().Items {
			if !yield(&types.WatchEvent{Type: types.WatchEvent_SNAPSHOT, Revision: item.Service.Revision, Service: item.Service}) {
				return
			}
			for _, srv := range withHealthChecks(item.Servers) {
				if !yield(&types.WatchEvent{Type: types.WatchEvent_SNAPSHOT, Revision: srv.Revision, Server: srv}) {
					return
				}
			}
		}
		for _, n := range nodes {
			if !yield(&types.WatchEvent{Type: types.WatchEvent_SNAPSHOT, Revision: state.Revision, Node: n}) {
				return
			}
		}
		yield(&types.WatchEvent{Type: types.WatchEvent_SYNCED, Revision: state.Revision})
	}
}

func toStatusOrNil(err error) error {
	if err == nil {
		return nil
	}
	return toStatus(err)
}

// follow streams the changes from revision from through a bounded queue:
// a client that falls more than the watch buffer behind is cut off with
// ResourceExhausted and the revision to resume from.
func (s *Server) follow(ctx context.Context, q *sendQueue, state *store.State, from int64) error {
	slow := false
	reason, err := s.store.Follow(ctx, from, store.FollowOptions{}, func(events []*clientv3.Event, _ int64) error {
		for _, ev := range events {
			if out := watchEvent(state, ev); out != nil && !q.push(out) {
				slow = true
				q.cutOff()
				return errSlowWatcher
			}
			from = ev.Kv.ModRevision + 1
		}
		return nil
	})
	switch {
	case q.sendErr() != nil:
		return q.sendErr()
	case slow:
		resume := q.oldest()
		if resume == 0 {
			resume = from
		}
		s.log.Warn("watch client too slow: cut off", "buffer_bytes", s.watchBuffer, "resume_revision", resume)
		return status.Errorf(codes.ResourceExhausted, "watch client too slow: more than %d bytes of events waiting; watch again from revision %d", s.watchBuffer, resume)
	case err != nil:
		return err
	case ctx.Err() != nil:
		return status.FromContextError(ctx.Err()).Err()
	case reason == store.RelistCompacted:
		return status.Errorf(codes.OutOfRange, "revision %d is compacted: watch from 0 (a fresh snapshot)", from)
	}
	return status.Errorf(codes.Unavailable, "store watch ended (%s): resume from revision %d", reason, from)
}

// watchEvent turns an etcd event into a Watch event, updating state; nil
// for keys that are not part of the API (or values that do not decode:
// List reports those).
func watchEvent(state *store.State, ev *clientv3.Event) *types.WatchEvent {
	ch, ok := state.ApplyEvent(ev)
	if !ok {
		return nil
	}
	out := &types.WatchEvent{Revision: ch.Revision, Type: types.WatchEvent_PUT, Service: ch.Service, Server: ch.Server, Node: ch.Node}
	if ch.Deleted {
		out.Type = types.WatchEvent_DELETE
	} else if out.Server != nil {
		out.Server = withHealthChecks([]*types.RealServer{out.Server})[0]
	}
	return out
}
