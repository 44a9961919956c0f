package ipvs

import (
	"errors"
	"fmt"
	"strings"
)

// OpKind says what an Op does.
type OpKind uint8

// Operation kinds.
const (
	OpAddService OpKind = iota + 1
	OpUpdateService
	OpDeleteService
	OpAddDestination
	OpUpdateDestination
	OpDeleteDestination
)

func (k OpKind) String() string {
	switch k {
	case OpAddService:
		return "add service"
	case OpUpdateService:
		return "update service"
	case OpDeleteService:
		return "delete service"
	case OpAddDestination:
		return "add destination"
	case OpUpdateDestination:
		return "update destination"
	case OpDeleteDestination:
		return "delete destination"
	}
	return fmt.Sprintf("op(%d)", uint8(k))
}

// Op is one change to the kernel table. Service ops use Service (its Config
// only for add and update); destination ops use Service.Key and Destination.
type Op struct {
	Kind        OpKind
	Service     Service
	Destination Destination
}

func (o Op) String() string {
	switch o.Kind {
	case OpAddDestination, OpUpdateDestination, OpDeleteDestination:
		return fmt.Sprintf("%s %s of %s", o.Kind, o.Destination.Key, o.Service.Key)
	}
	return fmt.Sprintf("%s %s", o.Kind, o.Service.Key)
}

var (
	// ErrNotSent marks ops that were never sent because the context ended
	// or the connection failed first: they did not apply.
	ErrNotSent = errors.New("not sent")
	// ErrOutcomeUnknown marks ops that were sent but whose outcome was never
	// confirmed (the context ended while waiting, or the socket failed):
	// read the kernel table to learn what applied.
	ErrOutcomeUnknown = errors.New("sent, outcome unknown")
)

// OpError is the failure of one op of a batch. Err is the kernel's errno
// (errors.Is(err, unix.EEXIST) and errors.Is(err, os.ErrExist) both work),
// ErrNotSent or ErrOutcomeUnknown.
type OpError struct {
	Index int // position in the slice given to Apply
	Op    Op
	Err   error
}

func (e *OpError) Error() string {
	return fmt.Sprintf("op %d (%s): %v", e.Index, e.Op, e.Err)
}

func (e *OpError) Unwrap() error { return e.Err }

// BatchError lists every op of an Apply call that did not apply; all others did.
type BatchError struct {
	Total  int // ops given to Apply
	Failed []*OpError
}

func (e *BatchError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d of %d ipvs ops failed", len(e.Failed), e.Total)
	for i, f := range e.Failed {
		if i == 3 {
			fmt.Fprintf(&b, "; and %d more", len(e.Failed)-3)
			break
		}
		b.WriteString("; ")
		b.WriteString(f.Error())
	}
	return b.String()
}

// Unwrap exposes each op's error to errors.Is and errors.As.
func (e *BatchError) Unwrap() []error {
	errs := make([]error, len(e.Failed))
	for i, f := range e.Failed {
		errs[i] = f
	}
	return errs
}
