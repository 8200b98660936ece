package main

import (
	"strings"
	"testing"
)

// The competitor targets are measured against the best of the competitors
// that ran, at every size and on every cluster measured, and a miss says so.
func TestTheCompetitorTargetsAreMeasuredAgainstEveryCompetitor(t *testing.T) {
	us := &contender{Key: "ours", Name: "ours", Binary: "ours"}
	seed := &contender{Key: "seed", Name: "seed", Binary: "seed"}
	fast := &contender{Key: "phenix66", Name: "fast", Binary: "fast"}
	r := &report{
		Contenders: []*contender{us, seed, fast},
		Scale: []scaleResult{
			{Contender: "ours", Profile: "linked", N: 20, Up: 36.8},
			{Contender: "seed", Profile: "linked", N: 20, Up: 52.8},
			{Contender: "fast", Profile: "linked", N: 20, Up: 50.0},
		},
		APICost: []apiCostResult{
			{Contender: "ours", N: 10, RequestsPerUpdate: 1},
			{Contender: "seed", N: 10, RequestsPerUpdate: 1},
			{Contender: "fast", N: 10, RequestsPerUpdate: 11},
			{Contender: "fast", N: 100, Error: "did not grow"},
		},
		APICostNodes: []apiCostResult{
			{Contender: "ours", N: 2000, Layout: "local5", RequestsPerUpdate: 2},
			{Contender: "seed", N: 2000, Layout: "local5", RequestsPerUpdate: 1},
		},
		Faults:      []faultResult{{Contender: "ours"}, {Contender: "seed", Crashes: 9}},
		FaultsNodes: []faultResult{{Contender: "ours", OrphanedDisks: 1}},
		Footprints:  []footprint{{Contender: "ours", IdleRSSKB: 13956}, {Contender: "seed", IdleRSSKB: 18044}},
	}
	text := rendered(func(w func(string, ...any)) { renderCompetitorTargets(w, r, us) })
	requireAll(t, "targets", text,
		"| 0.74× (ours 36.8 s, fast 50.0 s) | **no** |",
		"| ours ÷ theirs at most 2.00 (N = 2000, seed) over 3 comparisons | **no** |",
		"| one node: 0 VMs leaked, 0 orphaned disks, 0 crashes; three nodes: 0 VMs leaked, 1 orphaned disks, 0 crashes | **no** |",
		"| 13.6 MiB against 17.6 MiB | yes |")

	// Met when ours is at least twice as fast and sends no more requests.
	r.Scale[0].Up, r.APICostNodes[0].RequestsPerUpdate, r.FaultsNodes[0].OrphanedDisks = 24.0, 1, 0
	text = rendered(func(w func(string, ...any)) { renderCompetitorTargets(w, r, us) })
	if strings.Count(text, "| yes |") != 4 {
		t.Errorf("want all four targets met:\n%s", text)
	}

	// A competitor that never reached 20 running cannot be beaten by half.
	r.Scale = r.Scale[:1]
	text = rendered(func(w func(string, ...any)) { renderCompetitorTargets(w, r, us) })
	requireAll(t, "targets against failed competitors", text, "| ours 24.0 s; no competitor reached 20 running | yes |")

	// Without competitors nothing is claimed.
	alone := &report{Contenders: []*contender{us}, Scale: r.Scale[:1]}
	text = rendered(func(w func(string, ...any)) { renderCompetitorTargets(w, alone, us) })
	requireAll(t, "targets alone", text, "no competitor ran in this run", "no competitor's API cost", "not measured in this run", "the seed plugin was not given")
}
