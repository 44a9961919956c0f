package node

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"

	"github.com/merlin-ipvs/merlin/health"
)

// checkStates remembers what merlin decided of each health check — up or
// down — in a file replaced atomically, so that a restart starts every
// check where it was. Without it a restart guesses from the kernel's
// weights, and cannot tell its own health-down from an operator's raise
// of a weight it had not applied yet (a shared check then started down and
// took serving servers out). The path "" keeps it in memory only.
type checkStates struct {
	path  string
	up    map[string]bool // by health.Check.Identity
	dirty bool
}

type checkStatesFile struct {
	Up map[string]bool `json:"up"`
}

func loadCheckStates(path string) (*checkStates, error) {
	c := &checkStates{path: path, up: map[string]bool{}}
	if path == "" {
		return c, nil
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read check states: %w", err)
	}
	var f checkStatesFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("check state file %s is corrupt (move it away: checks then start from the kernel's weights): %w", path, err)
	}
	if f.Up != nil {
		c.up = f.Up
	}
	return c, nil
}

// record takes the state of every check the node runs: the monitor's
// where it has one, the initial state otherwise; checks no longer run are
// forgotten.
func (c *checkStates) record(initial map[health.Check]bool, state func(health.Check) (health.State, bool)) {
	now := make(map[string]bool, len(initial))
	for chk, up := range initial {
		if st, ok := state(chk); ok {
			up = st.Up
		}
		now[chk.Identity()] = up
	}
	if !maps.Equal(now, c.up) {
		c.up, c.dirty = now, true
	}
}

// recordChanged is record for the checks that changed state only (those
// the monitor no longer runs are left to the next record).
func (c *checkStates) recordChanged(changed []health.Check, initial map[health.Check]bool, state func(health.Check) (health.State, bool)) {
	for _, chk := range changed {
		if _, wanted := initial[chk]; !wanted {
			continue
		}
		st, ok := state(chk)
		if !ok {
			continue
		}
		id := chk.Identity()
		if was, ok := c.up[id]; !ok || was != st.Up {
			c.up[id], c.dirty = st.Up, true
		}
	}
}

// decided: merlin recorded a state of check chk (its startup evidence no
// longer counts).
func (c *checkStates) decided(chk health.Check) bool {
	_, ok := c.up[chk.Identity()]
	return ok
}

func (c *checkStates) save() error {
	if !c.dirty || c.path == "" {
		c.dirty = false
		return nil
	}
	b, err := json.Marshal(checkStatesFile{Up: c.up})
	if err != nil {
		return err
	}
	if err := writeFileAtomic(c.path, b); err != nil {
		return fmt.Errorf("save check states: %w", err)
	}
	c.dirty = false
	return nil
}
