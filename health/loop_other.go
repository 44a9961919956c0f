//go:build !linux

package health

import (
	"errors"
	"sync"
)

// The probe loop needs epoll: elsewhere each check runs in a goroutine
// of its own (the Monitor's fallback).

type loopCommand struct{ add, remove *runner }

type probeLoop struct{}

func loopable(Check) bool { return false }

func newProbeLoop(*Monitor, *sync.WaitGroup) (*probeLoop, error) {
	return nil, errors.New("the health probe loop needs epoll (Linux)")
}

func (*probeLoop) send(loopCommand) {}
func (*probeLoop) shutdown()        {}
