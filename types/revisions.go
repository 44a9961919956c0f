package types

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// RevisionsHeader is the request metadata by which a client says it means
// the revision fields it sends: merlin then applies an update or delete
// only at that revision (optimistic concurrency). Without it — the original
// Merlin's clients, which keep unknown fields and echo back the revision of
// an object they listed — revisions in requests are ignored and updates
// merge, as they always did.
const RevisionsHeader = "merlin-revisions"

// WithRevisions is the dial option of a client that means its revisions.
func WithRevisions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			return invoker(metadata.AppendToOutgoingContext(ctx, RevisionsHeader, "1"), method, req, reply, cc, opts...)
		}),
		grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			return streamer(metadata.AppendToOutgoingContext(ctx, RevisionsHeader, "1"), desc, cc, method, opts...)
		}),
	}
}

// RevisionsMeant reports whether an incoming request carries RevisionsHeader.
func RevisionsMeant(ctx context.Context) bool {
	md, _ := metadata.FromIncomingContext(ctx)
	return len(md.Get(RevisionsHeader)) > 0
}
