package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/merlin-ipvs/merlin/model"
	"github.com/merlin-ipvs/merlin/types"
)

// thresholdFlags are a service's healthy threshold settings.
type thresholdFlags struct {
	minServers, minPercent uint32
	holdDown               time.Duration
	action, sorryForward   string
	sorry                  []string
}

var thresholdFlagNames = []string{"healthy-min", "healthy-percent", "healthy-hold-down", "below", "sorry-server", "sorry-forward"}

func (th *thresholdFlags) register(f *pflag.FlagSet) {
	f.Uint32Var(&th.minServers, "healthy-min", 0, "healthy threshold: servers that must be up on a node (0: no minimum count)")
	f.Uint32Var(&th.minPercent, "healthy-percent", 0, "healthy threshold: percent of the servers (of weight above 0) that must be up on a node")
	f.DurationVar(&th.holdDown, "healthy-hold-down", 0, "healthy threshold: a change below or back above waits this long after the last (default 10s)")
	f.StringVar(&th.action, "below", "", "healthy threshold: what a node does below it: keep (serve what is left), withdraw (the VIP by BGP), sorry (new connections to --sorry-server)")
	f.StringSliceVar(&th.sorry, "sorry-server", nil, "healthy threshold: IP:PORT taking new connections below it (with --below sorry; repeatable; \"\" clears)")
	f.StringVar(&th.sorryForward, "sorry-forward", "", "healthy threshold: forward method to the sorry servers (default: the service's)")
}

// apply lays the flags given over the service's threshold; --healthy-min 0
// and --healthy-percent 0 together remove it.
func (th *thresholdFlags) apply(f *pflag.FlagSet, svc *types.VirtualService) error {
	changed := false
	for _, name := range thresholdFlagNames {
		changed = changed || f.Changed(name)
	}
	if !changed {
		return nil
	}
	t := svc.HealthyThreshold
	if t == nil {
		t = &types.HealthyThreshold{}
	}
	if f.Changed("healthy-min") {
		t.MinServers = wrapperspb.UInt32(th.minServers)
	}
	if f.Changed("healthy-percent") {
		t.MinPercent = wrapperspb.UInt32(th.minPercent)
	}
	if f.Changed("healthy-hold-down") {
		t.HoldDown = durationpb.New(th.holdDown)
	}
	if f.Changed("below") {
		a, err := parseBelowAction(th.action)
		if err != nil {
			return fmt.Errorf("--below: %w", err)
		}
		t.Action = a
	}
	if f.Changed("sorry-server") {
		t.SorryServers = nil
		for _, s := range nonEmpty(th.sorry) {
			k, err := serverKey(s)
			if err != nil {
				return fmt.Errorf("--sorry-server: %w", err)
			}
			t.SorryServers = append(t.SorryServers, k)
		}
	}
	if f.Changed("sorry-forward") {
		fm, err := model.ParseForward(th.sorryForward)
		if err != nil {
			return fmt.Errorf("--sorry-forward: %w", err)
		}
		t.SorryForward = fm
	}
	if t.MinServers.GetValue() == 0 && t.MinPercent.GetValue() == 0 {
		t = &types.HealthyThreshold{} // removes it
	}
	svc.HealthyThreshold = t
	return nil
}

func parseBelowAction(s string) (types.BelowThresholdAction, error) {
	switch strings.ToLower(s) {
	case "keep", "keep_serving", "keep-serving":
		return types.BelowThresholdAction_KEEP_SERVING, nil
	case "withdraw":
		return types.BelowThresholdAction_WITHDRAW, nil
	case "sorry":
		return types.BelowThresholdAction_SORRY, nil
	}
	return 0, fmt.Errorf("%q: want keep, withdraw or sorry", shorten(s))
}

// fileThreshold is a service's healthy threshold in the declarative file.
type fileThreshold struct {
	MinServers   *uint32  `json:"min_servers,omitempty"`
	MinPercent   *uint32  `json:"min_percent,omitempty"`
	HoldDown     string   `json:"hold_down,omitempty"`
	Below        string   `json:"below,omitempty"` // keep, withdraw, sorry
	SorryServers []string `json:"sorry_servers,omitempty"`
	SorryForward string   `json:"sorry_forward,omitempty"`
}

func (ft *fileThreshold) toProto() (*types.HealthyThreshold, error) {
	if ft == nil {
		return nil, nil
	}
	t := &types.HealthyThreshold{}
	if ft.MinServers != nil {
		t.MinServers = wrapperspb.UInt32(*ft.MinServers)
	}
	if ft.MinPercent != nil {
		t.MinPercent = wrapperspb.UInt32(*ft.MinPercent)
	}
	if ft.HoldDown != "" {
		d, err := time.ParseDuration(ft.HoldDown)
		if err != nil {
			return nil, fmt.Errorf("healthy_threshold.hold_down: %q: %w", shorten(ft.HoldDown), err)
		}
		t.HoldDown = durationpb.New(d)
	}
	var err error
	if ft.Below != "" {
		if t.Action, err = parseBelowAction(ft.Below); err != nil {
			return nil, fmt.Errorf("healthy_threshold.below: %w", err)
		}
	}
	for _, s := range ft.SorryServers {
		k, err := serverKey(s)
		if err != nil {
			return nil, fmt.Errorf("healthy_threshold.sorry_servers: %w", err)
		}
		t.SorryServers = append(t.SorryServers, k)
	}
	if ft.SorryForward != "" {
		if t.SorryForward, err = model.ParseForward(ft.SorryForward); err != nil {
			return nil, fmt.Errorf("healthy_threshold.sorry_forward: %w", err)
		}
	}
	return t, nil
}

func thresholdToFile(t *types.HealthyThreshold) *fileThreshold {
	if t == nil {
		return nil
	}
	ft := &fileThreshold{MinServers: uint32Of(t.MinServers != nil, t.GetMinServers().GetValue()),
		MinPercent: uint32Of(t.MinPercent != nil, t.GetMinPercent().GetValue()), Below: belowName(t.Action)}
	if t.HoldDown != nil {
		ft.HoldDown = t.HoldDown.AsDuration().String()
	}
	for _, k := range t.SorryServers {
		ft.SorryServers = append(ft.SorryServers, serverKeyText(k))
	}
	if t.SorryForward != types.ForwardMethod_UNSET_FORWARD_METHOD {
		ft.SorryForward = model.ForwardName(t.SorryForward)
	}
	return ft
}

func belowName(a types.BelowThresholdAction) string {
	switch a {
	case types.BelowThresholdAction_WITHDRAW:
		return "withdraw"
	case types.BelowThresholdAction_SORRY:
		return "sorry"
	}
	return "keep"
}
