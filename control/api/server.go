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
}

// NewServer serves the API from store.
func NewServer(store *store.Store, log *slog.Logger) *Server {
	return &Server{store: store, log: log, health: health.NewServer(), watchBuffer: DefaultWatchBuffer}
}

// SetWatchBuffer bounds the bytes of events waiting for one Watch client.
func (s *Server) SetWatchBuffer(n int) { s.watchBuffer = n }

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
	resp, err := s.store.List(ctx)
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
	ctx := stream.Context()
	var state *store.State
	var err error
	from := req.GetFromRevision()
	if from < 0 {
		return toStatus(model.FieldErrorf("from_revision", "must not be negative"))
	}
	if from == 0 {
		state, err = s.store.ListState(ctx)
		if err != nil {
			return toStatus(err)
		}
		for _, item := range state.ListResponse().Items {
			if err := stream.Send(&types.WatchEvent{Type: types.WatchEvent_SNAPSHOT, Revision: item.Service.Revision, Service: item.Service}); err != nil {
				return err
			}
			for _, srv := range withHealthChecks(item.Servers) {
				if err := stream.Send(&types.WatchEvent{Type: types.WatchEvent_SNAPSHOT, Revision: srv.Revision, Server: srv}); err != nil {
					return err
				}
			}
		}
		nodes, err := s.store.NodeStatuses(ctx)
		if err != nil {
			return toStatus(err)
		}
		for _, n := range nodes {
			if err := stream.Send(&types.WatchEvent{Type: types.WatchEvent_SNAPSHOT, Revision: state.Revision, Node: n}); err != nil {
				return err
			}
		}
		if err := stream.Send(&types.WatchEvent{Type: types.WatchEvent_SYNCED, Revision: state.Revision}); err != nil {
			return err
		}
		from = state.Revision + 1
	} else {
		// The state just before from decodes the events that follow.
		state, err = s.store.ListStateAt(ctx, from-1)
		if errors.Is(err, rpctypes.ErrCompacted) {
			return status.Errorf(codes.OutOfRange, "revision %d is compacted: watch from 0 (a fresh snapshot)", from)
		}
		if err != nil {
			return toStatus(err)
		}
	}
	return s.follow(ctx, stream, state, from)
}

// follow streams the changes from revision from through a bounded queue:
// a client that falls more than the watch buffer behind is cut off with
// ResourceExhausted and the revision to resume from.
func (s *Server) follow(ctx context.Context, stream grpc.ServerStreamingServer[types.WatchEvent], state *store.State, from int64) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	q := newSendQueue(stream, s.watchBuffer)
	go q.run(ctx)
	slow := false
	defer func() {
		cancel()
		if !slow {
			<-q.stopped
		}
		// A slow client's Send may be blocked on flow control: it fails
		// and the sender ends as soon as this handler has returned.
	}()
	reason, err := s.store.Follow(ctx, from, store.FollowOptions{}, func(events []*clientv3.Event, _ int64) error {
		for _, ev := range events {
			if out := watchEvent(state, ev); out != nil && !q.push(out) {
				slow = true
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
