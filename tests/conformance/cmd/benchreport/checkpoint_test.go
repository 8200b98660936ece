package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestStealIsTheShareOfAllCPUTimeBetweenTwoReadings(t *testing.T) {
	before, err := parseCPUTimes("cpu  100 0 50 800 10 0 0 40 0 0\ncpu0 1 2 3\n")
	if err != nil {
		t.Fatal(err)
	}
	after, err := parseCPUTimes("cpu  200 0 100 1500 10 0 0 190 0 0\n")
	if err != nil {
		t.Fatal(err)
	}
	// 1000 ticks passed, 150 of them stolen.
	if got := after.stealPercentSince(before); got != 15 {
		t.Errorf("steal = %v%%, want 15%%", got)
	}
	if _, err := parseCPUTimes("intr 1 2 3\n"); err == nil || !strings.Contains(err.Error(), "could not read /proc/stat") {
		t.Errorf("a file without the cpu line: %v", err)
	}
}

// A run interrupted after some parts goes on with the rest: the finished
// parts are not run again, their results and what they recorded of each
// plugin come back, and the plugins keep how to configure them.
func TestAnInterruptedRunResumesAfterItsLastFinishedPart(t *testing.T) {
	dir := t.TempDir()
	cp := &checkpoint{path: filepath.Join(dir, "checkpoint.json"), fingerprint: "same binaries"}
	contenders := func() []*contender {
		return []*contender{ours("plugin"), {Key: "seed", Name: "seed", Binary: "seed", Style: styleLukasK32, configure: configureOurs}}
	}

	first := &report{Contenders: contenders()}
	cp.part(first, "footprint and API cost of ours", func() {
		first.APICost = append(first.APICost, apiCostResult{Contender: "ours (Rust)", N: 10, RequestsPerUpdate: 1})
	})
	cp.part(first, "footprint and API cost of seed", func() {
		first.Contenders[1].Incidents = append(first.Contenders[1].Incidents, incident{Scenario: "api", Kind: "exited"})
		first.APICost = append(first.APICost, apiCostResult{Contender: "seed", N: 10, RequestsPerUpdate: 1})
	})
	// The machine went down here.

	second := &report{Contenders: contenders()}
	if !cp.resume(second) {
		t.Fatal("the checkpoint was not resumed")
	}
	ran := 0
	cp.part(second, "footprint and API cost of ours", func() { ran++ })
	cp.part(second, "footprint and API cost of seed", func() { ran++ })
	cp.part(second, "switch-over", func() { ran += 10 })
	if ran != 10 {
		t.Errorf("parts run after resuming: %d, want only the unfinished one", ran)
	}
	if len(second.APICost) != 2 || len(second.Parts) != 3 {
		t.Errorf("results after resuming: %d API cost results, %d parts; want 2 and 3", len(second.APICost), len(second.Parts))
	}
	if seed := second.Contenders[1]; len(seed.Incidents) != 1 || seed.configure == nil {
		t.Errorf("the seed after resuming: incidents %v, configure set %v", seed.Incidents, seed.configure != nil)
	}
	var saved report
	data, err := os.ReadFile(cp.path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &saved); err != nil {
		t.Fatal(err)
	}
	if len(saved.Parts) != 3 || saved.Fingerprint != "same binaries" {
		t.Errorf("the checkpoint after the last part: %d parts, fingerprint %q", len(saved.Parts), saved.Fingerprint)
	}

	other := &checkpoint{path: cp.path, fingerprint: "a rebuilt plugin"}
	if other.resume(&report{Contenders: contenders()}) {
		t.Error("a checkpoint of other binaries was resumed")
	}
}

func TestTheFingerprintChangesWithAnyBinary(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	plugin, sim, seed := write("plugin", "ours v1"), write("sim", "sim"), write("seed", "seed")
	competitors := []*contender{{Key: "seed", Binary: seed, Commit: "229b964"}}
	before, err := runFingerprint(plugin, sim, competitors)
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := runFingerprint(plugin, sim, competitors); again != before {
		t.Error("the same binaries gave another fingerprint")
	}
	write("seed", "seed rebuilt")
	if after, _ := runFingerprint(plugin, sim, competitors); after == before {
		t.Error("a rebuilt competitor kept the fingerprint")
	}
	if _, err := runFingerprint(filepath.Join(dir, "missing"), sim, nil); err == nil || !strings.Contains(err.Error(), "could not read plugin") {
		t.Errorf("a missing plugin binary: %v", err)
	}
}
