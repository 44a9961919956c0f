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
	"/types.Merlin/Status": true, "/types.Merlin/Stats": true, "/types.Merlin/ListPage": true,
	"/types.Merlin/ListBGP": true,
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

// authorize returns PermissionDenied naming the method unless the caller's
// identity holds the role the method needs. The audit line of the call
// names the identity that was granted the role, or every name refused.
func (s *Server) authorize(ctx context.Context, method string) error {
	note, _ := ctx.Value(auditKey{}).(*auditNote)
	if !s.roles.Enforced() || slices.ContainsFunc(openServices, func(p string) bool { return strings.HasPrefix(method, p) }) {
		return nil
	}
	id := identityOf(ctx)
	if name, ok := id.granted(s.roles.Writers); ok {
		note.grant(name)
		return nil
	}
	if name, ok := id.granted(s.roles.Readers); ok && readMethods[method] {
		note.grant(name)
		return nil
	}
	role := "writer"
	if readMethods[method] {
		role = "reader"
	}
	s.log.Warn("permission denied", "method", method, "identity", id.String(), "peer", id.addr)
	return status.Errorf(codes.PermissionDenied, "%s needs the %s role; client %q has none that allows it", method, role, id.String())
}

// granted is the first of the client's names the list admits.
func (id clientIdentity) granted(list []string) (string, bool) {
	for _, name := range id.names {
		for _, want := range list {
			if want == name || want == "*" {
				return name, true
			}
		}
	}
	return "", false
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

// auditKey carries an auditNote through a call's interceptors.
type auditKey struct{}

// auditNote is what the audit line learns during the call.
type auditNote struct{ grantedAs string }

func (n *auditNote) grant(name string) {
	if n != nil {
		n.grantedAs = name
	}
}

// auditUnary writes one audit line for every call that may change
// something, whatever stops it: refused, undecodable, failed, panicked or
// done. It runs first, so it sees every attempt.
func (s *Server) auditUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if readMethods[info.FullMethod] || !strings.HasPrefix(info.FullMethod, "/types.Merlin/") {
		return handler(ctx, req)
	}
	note := &auditNote{}
	start := time.Now()
	resp, err := handler(context.WithValue(ctx, auditKey{}, note), req)
	s.audit(ctx, info.FullMethod, req, note, err, time.Since(start))
	return resp, err
}

// auditLimit bounds the request quoted in one audit line.
const auditLimit = 4096

// audit logs one call that may change something: who made it (the name
// granted the role; without roles, or refused, the client's names), from
// where, what it asked for and how it ended.
func (s *Server) audit(ctx context.Context, method string, req any, note *auditNote, err error, took time.Duration) {
	id := identityOf(ctx)
	identity := note.grantedAs
	if identity == "" {
		identity = id.allNames()
	}
	change := ""
	if why := undecodable(req); why != nil {
		change = "(undecodable: " + status.Convert(why).Message() + ")"
	} else if m, ok := req.(proto.Message); ok {
		if r, ok := m.(interface{ Redacted() proto.Message }); ok {
			m = r.Redacted() // never a password in a log
		}
		b, merr := protojson.MarshalOptions{}.Marshal(m)
		if merr != nil {
			b = []byte(fmt.Sprintf("(%d bytes, not printable)", proto.Size(m)))
		}
		if change = string(b); len(change) > auditLimit {
			change = model.Truncate(change, auditLimit) + fmt.Sprintf(" (%d bytes)", len(b))
		}
	}
	s.log.LogAttrs(ctx, slog.LevelInfo, "audit",
		slog.String("method", method), slog.String("identity", identity), slog.String("peer", id.addr),
		slog.String("code", status.Code(err).String()), slog.String("request", change), slog.Duration("duration", took))
}

// allNames are the client's certificate names, cut short, or "anonymous".
func (id clientIdentity) allNames() string {
	if len(id.names) == 0 {
		return "anonymous"
	}
	return model.Truncate(strings.Join(id.names, ","), 128)
}
