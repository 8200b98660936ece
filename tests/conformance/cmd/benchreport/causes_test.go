package main

import (
	"strings"
	"testing"
)

// A go-proxmox panic's log lines as the host relays them: the panicking
// goroutine's first frame names the cause, later frames do not.
func panicLines(firstFrame string) []string {
	return []string{
		"[ERROR] fleeting-plugin-proxmox: panic: runtime error: invalid memory address or nil pointer dereference",
		"[ERROR] fleeting-plugin-proxmox: goroutine 37 [running]:",
		"[ERROR] fleeting-plugin-proxmox: " + firstFrame + "(0x1a733949e3c0, {0xc40200, 0x1a7339432cf0})",
		"[ERROR] fleeting-plugin-proxmox: github.com/luthermonson/go-proxmox.(*Client).Pool(0x1, 0x2)",
	}
}

func TestCrashesAndFailuresAreExplainedByTheirKnownCause(t *testing.T) {
	seed := &contender{Name: "seed (LukasK32)", Incidents: []incident{
		{Scenario: "scale-up", Kind: "panicked", LastLines: panicLines("github.com/luthermonson/go-proxmox.(*Client).Pool")},
		{Scenario: "faults", Kind: "panicked", LastLines: panicLines("github.com/luthermonson/go-proxmox.(*Task).Ping")},
		// The Pool frame further down does not make this a Pool crash.
		{Scenario: "faults", Kind: "panicked", LastLines: panicLines("github.com/example/plugin.(*Group).Update")},
		{Scenario: "api", Kind: "hung", Detail: "Increase did not return within 2m0s"},
	}}
	dxas := &contender{Name: "dxas90"}
	r := &report{Contenders: []*contender{seed, dxas},
		FaultsNodes: []faultResult{{Contender: "dxas90",
			Error: "could not start the plugin again after kill -9 (5 attempts): failed to get pool id='ci': pool not found"}}}

	text := rendered(func(w func(string, ...any)) { renderCauses(w, r) })
	requireAll(t, "causes", text,
		"`Client.Pool` gets a nil pool and sets its id (go-proxmox v0.2 and earlier) | seed (LukasK32) 1 |",
		"`Task.Wait` pings the nil task | seed (LukasK32) 1 |",
		"the plugin's Init fails on it | dxas90 1 |",
		"No known cause, read their log lines above: seed (LukasK32) 2.")
	if strings.Count(text, goProxmoxReadsA503AsData) != 1 || strings.Count(text, "\n| ") != 4 {
		t.Errorf("want the root cause once, then a header and three places it surfaced:\n%s", text)
	}

	if got := rendered(func(w func(string, ...any)) {
		renderCauses(w, &report{Contenders: []*contender{{Name: "ours (Rust)"}}})
	}); got != "" {
		t.Errorf("a run without crashes or failures wrote a section:\n%s", got)
	}
}
