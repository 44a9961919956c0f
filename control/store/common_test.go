package store_test

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/merlin-ipvs/merlin/internal/testobj"
)

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// noErr(t)(call()) fails the test if the call failed.

const prefix = "/merlin"

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

var tcpService, server = testobj.TCPService, testobj.Server
