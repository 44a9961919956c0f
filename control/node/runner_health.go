package node

// Health news reaches only the services it concerns: the runner keeps the
// services whose checks probe each target, and on news from the monitor
// looks again at the services of the checks that changed — not at every
// checked service, which at 10,000 services was a replan of the table per
// transition.

// indexChecks replaces service id's checks old by sc (empty: none) in the
// targets' index.
func (r *Runner) indexChecks(id string, old, sc ServiceChecks) {
	for _, c := range old.Servers {
		r.pass.checkTargets.remove(c.Check.Target, id)
	}
	for _, c := range sc.Servers {
		r.pass.checkTargets.add(c.Check.Target, id)
	}
}

// takeHealthNews notes the services whose checks changed state, for the
// next pass to plan again, and the checks, for rememberChecks.
func (r *Runner) takeHealthNews() {
	changed := r.health.TakeChanged()
	for _, c := range changed {
		r.pass.checkTargets.ids(c.Target, func(id string) { r.pass.healthLook[id] = true })
	}
	switch {
	case r.pass.healthNewsAll:
	case len(r.pass.healthNews)+len(changed) > len(r.pass.initial):
		r.pass.healthNews, r.pass.healthNewsAll = nil, true // as many as every check: remember all
	default:
		r.pass.healthNews = append(r.pass.healthNews, changed...)
	}
}

// rememberChecks keeps what merlin decided of every check for its next
// start (a failure to write is logged: the next change tries again): of
// the checks that changed state, or of all when the checks changed.
func (r *Runner) rememberChecks(all bool) {
	if all || r.pass.healthNewsAll {
		r.checkStates.record(r.pass.initial, r.health.State)
	} else {
		r.checkStates.recordChanged(r.pass.healthNews, r.pass.initial, r.health.State)
	}
	r.pass.healthNews, r.pass.healthNewsAll = nil, false
	if err := r.checkStates.save(); err != nil {
		r.log.Warn("check states not saved", "error", err)
	}
}
