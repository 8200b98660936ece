package main

import "testing"

// Each simulator's counters are cumulative between resets and read more
// than once: a late wait counts once, and the worst hold and delay win.
func TestSimulatorLagCountsEachLateWaitOnce(t *testing.T) {
	var tracker lagTracker
	var first, second int64
	tracker.observe(lagCounters{HoldMaxMicros: 3_000, LateWaits: 2, OverrunMaxMilli: 4_000}, &first)
	tracker.observe(lagCounters{HoldMaxMicros: 2_000, LateWaits: 2, OverrunMaxMilli: 4_000}, &first) // read again
	tracker.observe(lagCounters{HoldMaxMicros: 9_000, LateWaits: 1, OverrunMaxMilli: 1_500}, &second)
	tracker.restart(&first) // the first simulator's counters were reset
	tracker.observe(lagCounters{HoldMaxMicros: 500, LateWaits: 3, OverrunMaxMilli: 12_000}, &first)
	got := tracker.take()
	want := simLag{HoldMaxMillis: 9, LateWaits: 6, OverrunMaxSeconds: 12}
	if got != want {
		t.Errorf("lag %+v, want %+v", got, want)
	}
	if again := tracker.take(); again != (simLag{}) {
		t.Errorf("take starts again from none: %+v", again)
	}
}

// A part whose simulator lagged says so next to its figures.
func TestTheReportNamesThePartsWithALaggingSimulator(t *testing.T) {
	r := &report{Parts: []runPart{
		{Unit: "footprint and API cost of ours", StealPercent: 1, SimLag: &simLag{HoldMaxMillis: 4}},
		{Unit: "footprint and API cost of phenix66", StealPercent: 2, SimLag: &simLag{HoldMaxMillis: 900, LateWaits: 31, OverrunMaxSeconds: 175}},
		{Unit: "switch-over", StealPercent: -1},
	}}
	text := rendered(func(w func(string, ...any)) { renderParts(w, r) })
	requireAll(t, "parts table", text,
		"| none (longest hold 4 ms) |",
		"| 31 late task waits, up to 175 s (longest hold 900 ms) |",
		"| not measured |",
		"**1 of 3 parts ran with a lagging simulator.**",
	)
}
