package main

import (
	"strings"
	"testing"
)

func TestScenariosFlag(t *testing.T) {
	got, err := parseScenarios("switchover")
	if err != nil || !got["switchover"] || got["scale"] || got["api"] || got["footprint"] {
		t.Fatalf("parseScenarios(switchover) = %v, %v", got, err)
	}
	if all, _ := parseScenarios("all"); len(all) != len(allScenarios) {
		t.Errorf("all = %v", all)
	}
	if _, err := parseScenarios("switchover,nope"); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Errorf("an unknown scenario is not refused: %v", err)
	}
	if !(plan{}).runs("scale") {
		t.Error("a plan without -scenarios runs everything")
	}
}

// Without a seed-lineage competitor the section says it was not run, and why.
func TestSwitchoverNotRunWithoutTheSeed(t *testing.T) {
	r := &report{Contenders: []*contender{{Key: "ours", Name: "ours (Rust)", Binary: "/bin/true"},
		{Key: "ne0sight", Name: "nE0sIghT", Binary: "/bin/true", Style: styleNE0sIghT}}}
	p := plan{scenarios: map[string]bool{"switchover": true}}
	r.Switchover = runSwitchover(r, p, nil)
	if r.Switchover.NotRun == "" || len(r.Switchover.Runs) != 0 {
		t.Fatalf("switchover = %+v", r.Switchover)
	}
	text := renderMarkdown(r, "chart.svg")
	if !strings.Contains(text, "## 6. Switch-over from the seed") || !strings.Contains(text, "Not run: it needs the binary of a seed-lineage plugin") {
		t.Errorf("the report does not say the switch-over was not run and why:\n%s", text)
	}
	skipped := []*contender{{Key: "seed", Name: "seed (LukasK32)", Style: styleLukasK32}}
	if got := runSwitchover(r, p, skipped).NotRun; !strings.Contains(got, "left out by -competitors") {
		t.Errorf("a seed left out by -competitors: %q", got)
	}
	if got := runSwitchover(r, plan{scenarios: map[string]bool{"scale": true}}, nil).NotRun; !strings.Contains(got, "-scenarios") {
		t.Errorf("left out by -scenarios: %q", got)
	}
}
