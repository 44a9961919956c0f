package model

import "testing"

func TestValidStatusSpec(t *testing.T) {
	for _, good := range []string{"200", "200,204", "200-299", "200, 300-304"} {
		if err := ValidStatusSpec(good); err != nil {
			t.Errorf("%q refused: %v", good, err)
		}
	}
	for _, bad := range []string{"abc", "99", "300-200", "200-", "600", ""} {
		if ValidStatusSpec(bad) == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestForwardNames(t *testing.T) {
	for name, want := range map[string]string{"dr": "route", "Gatewaying": "route", "ipip": "tunnel", "nat": "masq", "m": "masq", "masq": "masq"} {
		m, err := ParseForward(name)
		if err != nil || ForwardName(m) != want {
			t.Errorf("ParseForward(%q) = %v, %v; want %s", name, ForwardName(m), err, want)
		}
	}
	if _, err := ParseForward("bypass"); err == nil {
		t.Error("bypass accepted")
	}
}
