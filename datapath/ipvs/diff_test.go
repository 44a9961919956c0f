package ipvs

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

func svc(addr string, port uint16, sched string) Service {
	return Service{Key: ServiceKey{Protocol: TCP, Address: netip.MustParseAddr(addr), Port: port}, Config: ServiceConfig{Scheduler: sched}}
}

func dst(addr string, port uint16, weight uint32) Destination {
	return Destination{Key: DestinationKey{Address: netip.MustParseAddr(addr), Port: port}, Config: DestinationConfig{Weight: weight, Forward: DirectRoute}}
}

func opsString(ops []Op) string {
	var b strings.Builder
	for _, o := range ops {
		fmt.Fprintln(&b, o)
	}
	return b.String()
}

func TestDiff(t *testing.T) {
	a := svc("198.18.0.1", 80, "rr")
	b := svc("198.18.0.2", 80, "rr")
	bWLC := svc("198.18.0.2", 80, "wlc")
	c := svc("198.18.0.3", 80, "rr")
	tests := []struct {
		name            string
		desired, actual []VirtualServer
		want            string
	}{
		{name: "empty both"},
		{
			name:    "add service then its destinations in key order",
			desired: []VirtualServer{{Service: a, Destinations: []Destination{dst("198.19.0.2", 80, 1), dst("198.19.0.1", 80, 1)}}},
			want: "add service tcp 198.18.0.1:80\n" +
				"add destination 198.19.0.1:80 of tcp 198.18.0.1:80\n" +
				"add destination 198.19.0.2:80 of tcp 198.18.0.1:80\n",
		},
		{
			name:   "delete service alone: the kernel drops its destinations",
			actual: []VirtualServer{{Service: a, Destinations: []Destination{dst("198.19.0.1", 80, 1)}}},
			want:   "delete service tcp 198.18.0.1:80\n",
		},
		{
			name:    "equal tables give no ops",
			desired: []VirtualServer{{Service: a, Destinations: []Destination{dst("198.19.0.1", 80, 1)}}},
			actual:  []VirtualServer{{Service: a, Destinations: []Destination{dst("198.19.0.1", 80, 1)}}},
		},
		{
			name:    "weight change is an update in place",
			desired: []VirtualServer{{Service: a, Destinations: []Destination{dst("198.19.0.1", 80, 0)}}},
			actual:  []VirtualServer{{Service: a, Destinations: []Destination{dst("198.19.0.1", 80, 5)}}},
			want:    "update destination 198.19.0.1:80 of tcp 198.18.0.1:80\n",
		},
		{
			name:    "scheduler change is an update in place",
			desired: []VirtualServer{{Service: bWLC}},
			actual:  []VirtualServer{{Service: b}},
			want:    "update service tcp 198.18.0.2:80\n",
		},
		{
			name: "mixed: deletes first, then per service add/update, destination delete, update, add",
			desired: []VirtualServer{
				{Service: c, Destinations: []Destination{dst("198.19.0.9", 80, 1)}},
				{Service: bWLC, Destinations: []Destination{dst("198.19.0.1", 80, 2), dst("198.19.0.3", 80, 1)}},
			},
			actual: []VirtualServer{
				{Service: a, Destinations: []Destination{dst("198.19.0.1", 80, 1)}},
				{Service: b, Destinations: []Destination{dst("198.19.0.1", 80, 1), dst("198.19.0.2", 80, 1)}},
			},
			want: "delete service tcp 198.18.0.1:80\n" +
				"update service tcp 198.18.0.2:80\n" +
				"delete destination 198.19.0.2:80 of tcp 198.18.0.2:80\n" +
				"update destination 198.19.0.1:80 of tcp 198.18.0.2:80\n" +
				"add destination 198.19.0.3:80 of tcp 198.18.0.2:80\n" +
				"add service tcp 198.18.0.3:80\n" +
				"add destination 198.19.0.9:80 of tcp 198.18.0.3:80\n",
		},
		{
			name: "canonical forms compare equal: mapped v4, full netmask, tunnel fields off tunnels",
			desired: []VirtualServer{{
				Service:      Service{Key: ServiceKey{Protocol: TCP, Address: netip.MustParseAddr("::ffff:198.18.0.1"), Port: 80}, Config: ServiceConfig{Scheduler: "rr", NetmaskBits: 32}},
				Destinations: []Destination{{Key: DestinationKey{Address: netip.MustParseAddr("::ffff:198.19.0.1"), Port: 80}, Config: DestinationConfig{Weight: 1, Forward: DirectRoute, TunnelPort: 99}}},
			}},
			actual: []VirtualServer{{Service: a, Destinations: []Destination{dst("198.19.0.1", 80, 1)}}},
		},
		{
			name:    "fwmark services keyed by mark and family",
			desired: []VirtualServer{{Service: Service{Key: ServiceKey{Family: IPv6, FWMark: 1, Port: 80}, Config: ServiceConfig{Scheduler: "rr"}}}},
			actual:  []VirtualServer{{Service: Service{Key: ServiceKey{Family: IPv4, FWMark: 1}, Config: ServiceConfig{Scheduler: "rr"}}}},
			want:    "delete service fwmark 1/ipv4\nadd service fwmark 1/ipv6\n",
		},
		{
			name:    "duplicate desired keys count once",
			desired: []VirtualServer{{Service: a}, {Service: svc("198.18.0.1", 80, "wlc")}},
			want:    "add service tcp 198.18.0.1:80\n",
		},
		{
			name: "a destination listed twice counts once, as first listed",
			desired: []VirtualServer{{Service: a, Destinations: []Destination{dst("198.19.0.2", 80, 2), dst("198.19.0.1", 80, 5),
				dst("198.19.0.2", 80, 3), dst("::ffff:198.19.0.1", 80, 7)}}},
			actual: []VirtualServer{{Service: a, Destinations: []Destination{dst("198.19.0.1", 80, 5), dst("198.19.0.2", 80, 3)}}},
			want:   "update destination 198.19.0.2:80 of tcp 198.18.0.1:80\n",
		},
		{
			name: "tunnel options compared",
			desired: []VirtualServer{{Service: a, Destinations: []Destination{{Key: dst("198.19.0.1", 80, 1).Key,
				Config: DestinationConfig{Weight: 1, Forward: Tunnel, TunnelType: TunnelGUE, TunnelPort: 6080}}}}},
			actual: []VirtualServer{{Service: a, Destinations: []Destination{{Key: dst("198.19.0.1", 80, 1).Key,
				Config: DestinationConfig{Weight: 1, Forward: Tunnel, TunnelType: TunnelIPIP}}}}},
			want: "update destination 198.19.0.1:80 of tcp 198.18.0.1:80\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := opsString(Diff(tt.desired, tt.actual))
			if got != tt.want {
				t.Fatalf("ops:\n%s\nwant:\n%s", got, tt.want)
			}
		})
	}
}

func TestDiffCarriesConfig(t *testing.T) {
	want := svc("198.18.0.1", 80, "sh")
	want.Key = want.Key.Canonical()
	want.Config.Flags = FlagSHPort | FlagPersistent
	want.Config.Timeout = 30
	d := dst("198.19.0.1", 80, 7)
	d.Config.UpperThreshold = 10
	ops := Diff([]VirtualServer{{Service: want, Destinations: []Destination{d}}}, nil)
	if len(ops) != 2 || ops[0].Service != want || ops[1].Destination != d || ops[1].Service.Key != want.Key.Canonical() {
		t.Fatalf("ops lost configuration: %+v", ops)
	}
}

func TestDiffDoesNotModifyInput(t *testing.T) {
	desired := []VirtualServer{{Service: svc("::ffff:198.18.0.1", 80, "rr"), Destinations: []Destination{dst("198.19.0.2", 80, 1), dst("198.19.0.1", 80, 1)}}}
	before := fmt.Sprintf("%+v", desired)
	Diff(desired, nil)
	if after := fmt.Sprintf("%+v", desired); after != before {
		t.Fatalf("Diff modified its input:\n%s\n%s", before, after)
	}
}
