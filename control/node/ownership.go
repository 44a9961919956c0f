package node

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/merlin-ipvs/merlin/datapath/ipvs"
)

// ownership is the set of kernel services merlin created, kept in a file
// so that it survives restarts: merlin changes and deletes only these.
// The file is replaced atomically (write, fsync, rename).
type ownership struct {
	path  string
	keys  map[ipvs.ServiceKey]bool
	dirty bool
}

type ownershipFile struct {
	Services []ipvs.ServiceKey `json:"services"`
}

func loadOwnership(path string) (*ownership, error) {
	o := &ownership{path: path, keys: map[ipvs.ServiceKey]bool{}}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return o, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read ownership file: %w", err)
	}
	var f ownershipFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("ownership file %s is corrupt (move it away to start over, owning nothing): %w", path, err)
	}
	for _, k := range f.Services {
		o.keys[k.Canonical()] = true
	}
	return o, nil
}

func (o *ownership) has(k ipvs.ServiceKey) bool { return o.keys[k.Canonical()] }
func (o *ownership) len() int                   { return len(o.keys) }

func (o *ownership) add(k ipvs.ServiceKey) {
	if k = k.Canonical(); !o.keys[k] {
		o.keys[k] = true
		o.dirty = true
	}
}

func (o *ownership) remove(k ipvs.ServiceKey) {
	if k = k.Canonical(); o.keys[k] {
		delete(o.keys, k)
		o.dirty = true
	}
}

func (o *ownership) list() []ipvs.ServiceKey {
	out := make([]ipvs.ServiceKey, 0, len(o.keys))
	for k := range o.keys {
		out = append(out, k)
	}
	return out
}

func (o *ownership) save() error {
	if !o.dirty {
		return nil
	}
	f := ownershipFile{Services: o.list()}
	slices.SortFunc(f.Services, func(a, b ipvs.ServiceKey) int { return strings.Compare(a.String(), b.String()) })
	b, err := json.MarshalIndent(f, "", " ")
	if err != nil {
		return err
	}
	if err := writeFileAtomic(o.path, b); err != nil {
		return err
	}
	o.dirty = false
	return nil
}

// writeFileAtomic replaces path with b: written, synced, renamed over.
func writeFileAtomic(path string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp := path + ".tmp"
	w, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := w.Write(b); err != nil {
		w.Close()
		return err
	}
	if err := w.Sync(); err != nil {
		w.Close()
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
