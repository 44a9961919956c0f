package api_test

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/merlin-ipvs/merlin/control/store"
	"github.com/merlin-ipvs/merlin/internal/etcdtest"
	"github.com/merlin-ipvs/merlin/internal/testenv"
	"github.com/merlin-ipvs/merlin/types"
)

// TestAPIBGPPeers: cluster BGP peers are validated like every object,
// created once, replaced at a revision, and their passwords go in and
// never come out — not in a read, not in the audit log, not in an error.
func TestAPIBGPPeers(t *testing.T) {
	var logged testenv.Buffer
	env := startAPILogged(t, etcdtest.Embedded, slog.New(slog.NewTextHandler(&logged, nil)), nil)
	ctx := ctxT(t)
	const secret = "tr0ub4dor&3-very-secret"
	tor := &types.BGPPeerConfig{Name: "tor-a", Address: "198.18.6.1", As: 65000, Password: secret,
		HoldTime: durationpb.New(9 * time.Second), Bfd: true, NodeLabels: map[string]string{"rack": "r1"}}
	noErr(t)(env.client.PutBGPPeer(ctx, &types.PutBGPPeerRequest{Peer: tor, Create: true}))
	_, err := env.client.PutBGPPeer(ctx, &types.PutBGPPeerRequest{Peer: tor, Create: true})
	wantCode(t, err, codes.AlreadyExists)

	for field, bad := range map[string]*types.BGPPeerConfig{
		"address":        {Name: "x", Address: "127.0.0.1", As: 1},
		"as":             {Name: "x", Address: "198.18.6.2"},
		"hold_time":      {Name: "x", Address: "198.18.6.2", As: 1, HoldTime: durationpb.New(time.Second)},
		"bfd":            {Name: "x", Address: "198.18.6.2", As: 1, BfdMultiplier: 5},
		"password":       {Name: "x", Address: "198.18.6.2", As: 1, Password: strings.Repeat(secret, 5)},
		"name":           {Name: "a/b", Address: "198.18.6.2", As: 1},
		"node_labels":    {Name: "x", Address: "198.18.6.2", As: 1, NodeLabels: map[string]string{"bad key": "v"}},
		"local_address":  {Name: "x", Address: "198.18.6.2", As: 1, LocalAddress: "2001:db8::1"},
		"password_set":   {Name: "x", Address: "198.18.6.2", As: 1, PasswordSet: true},
		"multihop_ttl":   {Name: "x", Address: "198.18.6.2", As: 1, MultihopTtl: 300},
		"password_file":  {Name: "x", Address: "198.18.6.2", As: 1, PasswordFile: "relative"},
		"keepalive_time": {Name: "x", Address: "198.18.6.2", As: 1, HoldTime: durationpb.New(9 * time.Second), KeepaliveTime: durationpb.New(9 * time.Second)},
	} {
		_, err := env.client.PutBGPPeer(ctx, &types.PutBGPPeerRequest{Peer: bad, Create: true})
		wantCode(t, err, codes.InvalidArgument)
		if !strings.Contains(err.Error(), field) || strings.Contains(err.Error(), secret) {
			t.Errorf("%s: the error does not name the field, or quotes the password: %v", field, err)
		}
	}

	got, err := env.client.ListBGP(ctx, &emptypb.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Peers) != 1 || got.Peers[0].Password != "" || !got.Peers[0].PasswordSet || got.Peers[0].Revision == 0 {
		t.Fatalf("listed %v: want tor-a without its password, password_set and a revision", got.Peers)
	}
	// An edit as meradm makes it: what was listed, changed, at its revision,
	// keeping the password it never saw.
	edit := got.Peers[0]
	edit.PasswordSet, edit.HoldTime = false, durationpb.New(6*time.Second)
	noErr(t)(env.client.PutBGPPeer(ctx, &types.PutBGPPeerRequest{Peer: edit, KeepPassword: true}))
	_, err = env.client.PutBGPPeer(ctx, &types.PutBGPPeerRequest{Peer: edit, KeepPassword: true})
	wantCode(t, err, codes.Aborted) // the revision moved on
	st := store.NewStore(env.kv, prefix)
	stored, _, err := st.ListBGP(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if p := stored.Peers["tor-a"]; p.GetPassword() != secret || p.GetHoldTime().AsDuration() != 6*time.Second {
		t.Fatalf("stored after the edit: hold %v, password kept %v", p.GetHoldTime().AsDuration(), p.GetPassword() == secret)
	}
	_, err = env.client.PutBGPPeer(ctx, &types.PutBGPPeerRequest{Peer: &types.BGPPeerConfig{Name: "nope", Address: "198.18.6.9", As: 1}})
	wantCode(t, err, codes.NotFound)

	noErr(t)(env.client.SetBGPSettings(ctx, &types.BGPSettings{LocalAs: 65001, RouterIdPrefix: "198.18.6.0/24"}))
	_, err = env.client.SetBGPSettings(ctx, &types.BGPSettings{RouterIdPrefix: "2001:db8::/64"})
	wantCode(t, err, codes.InvalidArgument)
	noErr(t)(env.client.DeleteBGPPeer(ctx, &types.DeleteBGPPeerRequest{Name: "tor-a"}))
	_, err = env.client.DeleteBGPPeer(ctx, &types.DeleteBGPPeerRequest{Name: "tor-a"})
	wantCode(t, err, codes.NotFound)
	if got, _ := env.client.ListBGP(ctx, &emptypb.Empty{}); len(got.GetPeers()) != 0 || got.GetSettings().GetLocalAs() != 65001 {
		t.Fatalf("after the delete: %v", got)
	}
	if strings.Contains(logged.String(), secret) || !strings.Contains(logged.String(), `\"password\":\"(set)\"`) {
		t.Errorf("the audit log quotes the password, or does not say one was set:\n%s", logged.String())
	}
}
