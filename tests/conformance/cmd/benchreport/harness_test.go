package main

// The harness's own test: it drives, through the same code as a benchmark
// run (runContender), a plugin that ignores SIGINT and hangs, one that
// panics mid-run, and then a well-behaved one, and checks that the first two
// are killed and recorded and that the run goes on to the third.
//
// It needs the simulator binary: PVE_SIM_BINARY (tests/conformance/run.sh
// and .ci/run set it), else target/debug/pve-sim of this checkout.
//
//	cd tests/conformance && GONOSUMDB=gitlab.com/gitlab-org/fleeting GOFLAGS=-mod=mod \
//	    PVE_SIM_BINARY=$PWD/../../target/debug/pve-sim go test ./cmd/benchreport

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func simBinary(t *testing.T) string {
	t.Helper()
	path := os.Getenv("PVE_SIM_BINARY")
	if path == "" {
		path, _ = filepath.Abs("../../../../target/debug/pve-sim")
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("the simulator binary is needed (set PVE_SIM_BINARY or build target/debug/pve-sim): %v", err)
	}
	return path
}

// buildMisbehave builds testdata/misbehave in the given mode.
func buildMisbehave(t *testing.T, dir, mode string) string {
	t.Helper()
	out := filepath.Join(dir, "misbehave-"+mode)
	cmd := exec.Command("go", "build", "-o", out, "-ldflags", "-X main.mode="+mode, "./testdata/misbehave")
	cmd.Env = append(os.Environ(), "GONOSUMDB=gitlab.com/gitlab-org/fleeting", "GOFLAGS=-mod=mod")
	if text, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("could not build the %s test plugin: %v\n%s", mode, err, text)
	}
	return out
}

func testContender(key, binary string) *contender {
	return &contender{Key: key, Name: key, Binary: binary, Style: "test",
		configure: func(*simulator, string, runParams) ([]byte, error) { return []byte(`{}`), nil }}
}

func TestHarnessKillsRecordsAndGoesOn(t *testing.T) {
	sim := simBinary(t)
	dir := t.TempDir()
	stubborn := buildMisbehave(t, dir, "stubborn")
	panicky := buildMisbehave(t, dir, "panic")
	good := buildMisbehave(t, dir, "good")

	saved := limits
	t.Cleanup(func() { limits = saved })
	limits.Init, limits.Increase, limits.Update, limits.ConnectInfo, limits.Decrease = 5*time.Second, 5*time.Second, 2*time.Second, 2*time.Second, 5*time.Second
	limits.Shutdown, limits.Kill, limits.Start = 2*time.Second, 10*time.Second, 10*time.Second

	run := 0
	p := plan{simBinary: sim, sizes: []int{1}, apiSizes: []int{2}, linkedScale: 2, fullScale: 5, apiScale: 20,
		cloneLimit: 4, faultRate: 0.05, profiles: []bool{false}, handshakeRuns: 2,
		// The fault comparison runs 90 s per plugin; its driver is exercised
		// by scripts/bench-report -quick in CI.
		scenarios: map[string]bool{"footprint": true, "api": true, "scale": true},
		dir: func(what string) string {
			run++
			return filepath.Join(dir, "work", fmt.Sprintf("%03d-%s", run, what))
		}}
	r := &report{}
	contenders := []*contender{testContender("stubborn", stubborn), testContender("panicky", panicky), testContender("good", good)}
	started := time.Now()
	for _, c := range contenders {
		runContender(r, c, p)
	}
	t.Logf("three contenders in %s", time.Since(started).Round(time.Second))

	// (a) The plugin that ignores SIGINT ended by go-plugin's Kill
	// (controller Shutdown, 2 s, SIGKILL) in every handshake run, and hung
	// in Update: killed and recorded in each scenario.
	fp := findFootprint(r, "stubborn")
	if fp == nil || fp.Error != "" && !strings.Contains(fp.Error, "idle RSS") {
		t.Fatalf("stubborn footprint: %+v", fp)
	}
	if fp.HandshakeMillis <= 0 || fp.HandshakeKilled != p.handshakeRuns {
		t.Errorf("stubborn handshake: %.1f ms, %d of %d runs needed SIGKILL; want a time and all runs killed", fp.HandshakeMillis, fp.HandshakeKilled, p.handshakeRuns)
	}
	assertIncidents(t, contenders[0], "hung", "Update", "killed", "Update: never returning")

	// (b) The plugin that panics: recorded with its exit status and the
	// panic in the last log lines.
	assertIncidents(t, contenders[1], "panicked", "", "exit status 2", "nil pointer dereference")
	for _, s := range r.Scale {
		if s.Contender == "panicky" && !strings.Contains(s.Error, "panicked") {
			t.Errorf("panicky scale result does not say it panicked: %+v", s)
		}
	}

	// The run went on: the third plugin ran every scenario.
	if len(contenders[2].Incidents) != 0 {
		t.Errorf("the good plugin has incidents: %+v", contenders[2].Incidents)
	}
	var goodScale int
	for _, s := range r.Scale {
		if s.Contender == "good" {
			goodScale++
			if s.Error != "" || s.Up <= 0 {
				t.Errorf("good plugin scale result: %+v", s)
			}
		}
	}
	if goodScale != 2 {
		t.Errorf("good plugin ran %d scale scenarios, want 2", goodScale)
	}
	for _, a := range r.APICost {
		if a.Contender == "good" && (a.Error != "" || a.Updates == 0) {
			t.Errorf("good plugin API cost: %+v", a)
		}
	}

	// No test plugin process is left.
	for _, binary := range []string{stubborn, panicky, good} {
		if pid := childPID(binary); pid != 0 {
			t.Errorf("%s still runs as pid %d", filepath.Base(binary), pid)
		}
	}

	// The report renders the incidents with their last lines.
	r.Contenders = append([]*contender{{Key: "ours", Name: "ours (Rust)"}}, contenders...)
	text := renderMarkdown(r, "chart.svg")
	for _, want := range []string{"stubborn**, idle RSS: hung during Update", "panicky**", "exit status 2", "nil pointer dereference"} {
		if !strings.Contains(text, want) {
			t.Errorf("the report lacks %q", want)
		}
	}
}

// assertIncidents checks that every incident of c is of the given kind
// (noticed during the given call, when not empty) with the given status, that
// there is one per scenario at least, and that the last lines hold line.
func assertIncidents(t *testing.T, c *contender, kind, during, status, line string) {
	t.Helper()
	if len(c.Incidents) < 3 {
		t.Fatalf("%s: %d incidents, want one per scenario (idle RSS, API cost, 2 × scale): %+v", c.Key, len(c.Incidents), c.Incidents)
	}
	for _, i := range c.Incidents {
		if i.Kind != kind || (during != "" && i.During != during) || !strings.HasPrefix(i.Status, status) {
			t.Errorf("%s: incident %+v, want kind %s during %q status %s", c.Key, i, kind, during, status)
		}
		if !strings.Contains(strings.Join(i.LastLines, "\n"), line) {
			t.Errorf("%s: incident in %s lacks %q in its last lines:\n%s", c.Key, i.Scenario, line, strings.Join(i.LastLines, "\n"))
		}
	}
}

// A ticket lasts two hours of the wall clock at every time scale, so that a
// plugin that logs in again every real hour never meets an expired one.
func TestTicketsLastTwoRealHoursAtAnyTimeScale(t *testing.T) {
	for _, scale := range []float64{1, 20} {
		withTimings := scenario(realisticTimings, 10)
		withRealTimeTickets(withTimings, scale)
		without := map[string]any{}
		withRealTimeTickets(without, scale)
		for name, s := range map[string]map[string]any{"scenario": withTimings, "bare": without} {
			if got := s["timings"].(map[string]any)["ticket_lifetime"]; got != 7200*scale {
				t.Errorf("%s at time scale %v: ticket_lifetime %v simulated seconds, want %v", name, scale, got, 7200*scale)
			}
		}
	}
}
