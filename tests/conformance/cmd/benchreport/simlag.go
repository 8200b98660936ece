package main

import (
	"fmt"
	"sync"
)

// simLag is the simulator's own lag while a part ran: a real PVE runs each
// task in its own process, the simulator runs them beside its API handlers,
// so a handler that keeps it busy delays every task. At a time scale of 20
// one real second of that is 20 simulated seconds in which no clone
// advances and lock timeouts run out: a part with late task waits measured
// the simulator as much as the plugin.
type simLag struct {
	// HoldMaxMillis is the longest the simulator held its cluster state
	// locked at once (real milliseconds).
	HoldMaxMillis float64 `json:"hold_max_ms"`
	// LateWaits counts task waits that ended more than a simulated second
	// after they were due; OverrunMaxSeconds is the worst one's delay.
	LateWaits         int64   `json:"late_task_waits"`
	OverrunMaxSeconds float64 `json:"overrun_max_s"`
}

func (l simLag) String() string {
	if l.LateWaits == 0 {
		return fmt.Sprintf("none (longest hold %.0f ms)", l.HoldMaxMillis)
	}
	return fmt.Sprintf("%d late task waits, up to %.0f s (longest hold %.0f ms)", l.LateWaits, l.OverrunMaxSeconds, l.HoldMaxMillis)
}

// lagCounters are the simulator's counters of its own lag, cumulative
// since its last counter reset.
type lagCounters struct {
	HoldMaxMicros   int64 `json:"cluster_held_max_micros"`
	LateWaits       int64 `json:"task_waits_late"`
	OverrunMaxMilli int64 `json:"task_wait_overrun_max_millis"`
}

// lagTracker adds up the lag of every simulator a part starts. Each
// simulator's counters are read before every reset and at its end, and only
// what is new since the last read is added.
type lagTracker struct {
	mu  sync.Mutex
	lag simLag
}

// partLag is the lag of the part running now (parts run one at a time).
var partLag lagTracker

// observe adds a reading; seenLate is the late waits the same simulator had
// already reported since its last reset (updated here).
func (t *lagTracker) observe(c lagCounters, seenLate *int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.lag.HoldMaxMillis = max(t.lag.HoldMaxMillis, float64(c.HoldMaxMicros)/1000)
	t.lag.OverrunMaxSeconds = max(t.lag.OverrunMaxSeconds, float64(c.OverrunMaxMilli)/1000)
	if c.LateWaits > *seenLate {
		t.lag.LateWaits += c.LateWaits - *seenLate
	}
	*seenLate = c.LateWaits
}

// restart forgets what a simulator reported, before its counters are reset.
func (t *lagTracker) restart(seenLate *int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	*seenLate = 0
}

// take returns the lag so far and starts again from none.
func (t *lagTracker) take() simLag {
	t.mu.Lock()
	defer t.mu.Unlock()
	lag := t.lag
	t.lag = simLag{}
	return lag
}
