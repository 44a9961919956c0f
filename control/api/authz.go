package api

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/merlin-ipvs/merlin/model"
)

// Roles says which client identities may read the desired state and which
// may change it. An identity is a verified client certificate's subject
// common name or one of its DNS, email or URI subject alternative names;
// "*" is any verified certificate. Writers may read. With no roles at all
// every client the transport lets in may do everything (loopback, or
// mutual TLS where the CA is the only gate).
type Roles struct {
	Readers []string
	Writers []string
}

// Enforced: some role is configured, so an unknown identity gets nothing.
func (r Roles) Enforced() bool { return len(r.Readers) > 0 || len(r.Writers) > 0 }

// readMethods need the reader role; every other method of the Merlin
// service (including any added later) needs the writer role.
var readMethods = map[string]bool{
	"/types.Merlin/List": true, "/types.Merlin/GetService": true, "/types.Merlin/Watch": true,
	"/types.Merlin/Status": true, "/types.Merlin/Stats": true,
}

// openServices answer anyone the transport lets in: they reveal nothing of
// the desired state.
var openServices = []string{"/grpc.health.v1.Health/", "/grpc.reflection."}

// SetRoles makes the server check every call against roles.
func (s *Server) SetRoles(r Roles) { s.roles = r }

// clientIdentity is who made the call: the names of its verified
// certificate, and the peer address.
type clientIdentity struct {
	names []string // CN first, then SANs; empty without a certificate
	addr  string
}

func identityOf(ctx context.Context) clientIdentity {
	var id clientIdentity
	p, ok := peer.FromContext(ctx)
	if !ok {
		return id
	}
	if p.Addr != nil {
		id.addr = p.Addr.String()
	}
	if tlsInfo, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(tlsInfo.State.VerifiedChains) > 0 && len(tlsInfo.State.VerifiedChains[0]) > 0 {
		id.names = certNames(tlsInfo.State.VerifiedChains[0][0])
	}
	return id
}

func certNames(c *x509.Certificate) []string {
	var names []string
	if c.Subject.CommonName != "" {
		names = append(names, c.Subject.CommonName)
	}
	names = append(names, c.DNSNames...)
	names = append(names, c.EmailAddresses...)
	for _, u := range c.URIs {
		names = append(names, u.String())
	}
	return names
}

// String names the client: its certificate's first name (cut short), or
// "anonymous". Logs and errors quote it.
func (id clientIdentity) String() string {
	if len(id.names) == 0 {
		return "anonymous"
	}
	return model.Truncate(id.names[0], 64)
}

func (id clientIdentity) in(list []string) bool {
	for _, want := range list {
		if want == "*" && len(id.names) > 0 || slices.Contains(id.names, want) {
			return true
		}
	}
	return false
}

// authorize returns PermissionDenied naming the method unless the caller's
// identity holds the role the method needs.
func (s *Server) authorize(ctx context.Context, method string) error {
	if !s.roles.Enforced() || slices.ContainsFunc(openServices, func(p string) bool { return strings.HasPrefix(method, p) }) {
		return nil
	}
	id := identityOf(ctx)
	if id.in(s.roles.Writers) || readMethods[method] && id.in(s.roles.Readers) {
		return nil
	}
	role := "writer"
	if readMethods[method] {
		role = "reader"
	}
	s.log.Warn("permission denied", "method", method, "identity", id.String(), "peer", id.addr)
	return status.Errorf(codes.PermissionDenied, "%s needs the %s role; client %q has none that allows it", method, role, id.String())
}

func (s *Server) authorizeUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if err := s.authorize(ctx, info.FullMethod); err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

func (s *Server) authorizeStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if err := s.authorize(ss.Context(), info.FullMethod); err != nil {
		return err
	}
	return handler(srv, ss)
}

// auditLimit bounds the request quoted in one audit line.
const auditLimit = 4096

// audit logs every call that may change something — who made it, from
// where, what it asked for and how it ended — at info, whatever the
// outcome.
func (s *Server) audit(ctx context.Context, method string, req any, err error, took time.Duration) {
	if readMethods[method] || !strings.HasPrefix(method, "/types.Merlin/") {
		return
	}
	id := identityOf(ctx)
	change := ""
	if m, ok := req.(proto.Message); ok {
		b, merr := protojson.MarshalOptions{}.Marshal(m)
		if merr != nil {
			b = []byte(fmt.Sprintf("(%d bytes, not printable)", proto.Size(m)))
		}
		if change = string(b); len(change) > auditLimit {
			change = model.Truncate(change, auditLimit) + fmt.Sprintf(" (%d bytes)", len(b))
		}
	}
	s.log.LogAttrs(ctx, slog.LevelInfo, "audit",
		slog.String("method", method), slog.String("identity", id.String()), slog.String("peer", id.addr),
		slog.String("code", status.Code(err).String()), slog.String("request", change), slog.Duration("duration", took))
}
