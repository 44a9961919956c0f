package store

import (
	"testing"
)

func TestSameDesired(t *testing.T) {
	st := testState(t, svcAt("web", "198.18.0.1", "wrr"), svcAt("api", "198.18.0.2", "rr"))
	withServer(t, st, "web", "198.19.0.1:8080", 1)
	same := st.Clone()
	withServer(t, same, "web", "198.19.0.1:8080", 1) // equal values, new pointers
	if !sameDesired(st, same) {
		t.Fatal("equal states differ")
	}
	weight := st.Clone()
	withServer(t, weight, "web", "198.19.0.1:8080", 2)
	extra := st.Clone()
	withServer(t, extra, "api", "198.19.0.9:8080", 1)
	invalid := st.Clone()
	invalid.Invalid["/merlin/services/x"] = "bad"
	gone := st.Clone()
	delete(gone.Services, "api")
	for name, other := range map[string]*State{"weight": weight, "extra server": extra, "invalid key": invalid, "missing service": gone} {
		if sameDesired(st, other) || sameDesired(other, st) {
			t.Errorf("%s: states compare equal", name)
		}
	}
}
