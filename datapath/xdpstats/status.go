package xdpstats

// Attachment is one program on one interface.
type Attachment struct {
	Interface string
	Hook      string // "xdp native", "xdp generic", "tcx egress", "clsact ingress", …
}

// Status is what the counters are doing and, when off, why.
type Status struct {
	On         bool
	Reason     string // why counters are off
	Attached   []Attachment
	Keys       int // keys counted
	Dropped    int // keys that did not fit their map
	Unresolved int // direct-routing servers whose MAC the node does not know yet
}
