package node

import (
	"cmp"
	"slices"

	"google.golang.org/protobuf/proto"

	"github.com/merlin-ipvs/merlin/control/store"
	"github.com/merlin-ipvs/merlin/internal/chunklist"
	"github.com/merlin-ipvs/merlin/types"
)

// maxStatusEntries bounds each list of a node's status. A status is one
// etcd value (at most 1.5 MiB by default: 100,000 servers' health is
// 4.6 MB), and the runner compares a whole status with the last on every
// change; what a bound leaves out is counted in NodeStatus.omitted, and the
// node's metrics have every entry.
const maxStatusEntries = 1000

// Names of the bounded lists in NodeStatus.omitted (their field names).
const (
	omittedServers        = "servers"
	omittedServicesDown   = "services_down"
	omittedServicesBelow  = "services_below"
	omittedVIPsNotServing = "vips_not_serving"
	omittedErrors         = "errors"
)

// bounded is list's first maxStatusEntries entries; it counts in st's
// omitted how many it left out of the list name.
func bounded[E any](st *types.NodeStatus, name string, list []E) []E {
	left := max(len(list)-maxStatusEntries, 0)
	setOmitted(st, name, left)
	return list[: len(list)-left : len(list)-left]
}

// boundedHead is bounded for a node plan's list.
func boundedHead[E any](st *types.NodeStatus, name string, list chunklist.List[E]) []E {
	setOmitted(st, name, max(list.Len()-maxStatusEntries, 0))
	return list.Head(maxStatusEntries)
}

func setOmitted(st *types.NodeStatus, name string, n int) {
	if n == 0 {
		delete(st.Omitted, name)
		return
	}
	if st.Omitted == nil {
		st.Omitted = map[string]uint32{}
	}
	st.Omitted[name] = uint32(n)
}

// statusBudget is the most a node status may take encoded: what the store
// keeps of one object, less room for what PublishStatus adds.
const statusBudget = store.MaxStoredBytes - 1<<10

// boundedList is one of node status's bounded lists, for fitStatus.
type boundedList struct {
	name string
	n    int
	keep func(int)
}

// fitStatus halves st's longest bounded list until st fits statusBudget,
// counting what it leaves out in omitted (a node with many servers down,
// each with its error, fills the budget before maxStatusEntries).
func fitStatus(st *types.NodeStatus) {
	for proto.Size(st) > statusBudget {
		longest := slices.MaxFunc([]boundedList{
			{omittedServers, len(st.Servers), func(k int) { st.Servers = st.Servers[:k:k] }},
			{omittedServicesDown, len(st.ServicesDown), func(k int) { st.ServicesDown = st.ServicesDown[:k:k] }},
			{omittedServicesBelow, len(st.ServicesBelow), func(k int) { st.ServicesBelow = st.ServicesBelow[:k:k] }},
			{omittedVIPsNotServing, len(st.VipsNotServing), func(k int) { st.VipsNotServing = st.VipsNotServing[:k:k] }},
			{omittedErrors, len(st.Errors), func(k int) { st.Errors = st.Errors[:k:k] }},
		}, func(a, b boundedList) int { return cmp.Compare(a.n, b.n) })
		if longest.n == 0 {
			return // too large without any list: the store says so
		}
		longest.keep(longest.n / 2)
		setOmitted(st, longest.name, int(st.Omitted[longest.name])+longest.n-longest.n/2)
	}
}
