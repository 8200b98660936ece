package main

// A full run takes hours (a plugin that reads every VM on each Update needs
// most of an hour for its API cost alone), longer than the machine may stay
// up. With -checkpoint the run saves its results after every finished part
// and, started again with the same binaries and flags, goes on after the
// last finished part instead of from the beginning. Each part records when
// it ran and how much CPU the hypervisor took from this machine meanwhile
// (steal), so the report shows which figures came from a noisy hour.

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// runPart is one finished part of a run: a plugin's footprint and API
// cost, the side-by-side timed runs, the metrics overhead, the switch-over.
type runPart struct {
	Unit    string    `json:"unit"`
	Started time.Time `json:"started"`
	Ended   time.Time `json:"ended"`
	// StealPercent is the share of this machine's CPU time the hypervisor
	// gave to other guests while the part ran (/proc/stat); -1 when unknown.
	StealPercent float64 `json:"steal_percent"`
	// SimLag is the simulators' own lag while the part ran (simlag.go).
	SimLag *simLag `json:"sim_lag,omitempty"`
}

// checkpoint saves a run's progress to a file and resumes from it.
type checkpoint struct {
	path        string
	fingerprint string
}

// runFingerprint identifies what a run measures: the bytes of every binary
// and the flags that change a measurement. Output paths, the scratch
// directory and the checkpoint file itself do not count.
func runFingerprint(plugin, sim string, competitors []*contender) (string, error) {
	h := sha256.New()
	hashFile := func(label, path string) error {
		f, err := os.Open(path)
		if err != nil {
			return fmt.Errorf("could not read %s %s: %w", label, path, err)
		}
		defer f.Close()
		fmt.Fprintf(h, "%s\n", label)
		_, err = io.Copy(h, f)
		return err
	}
	if err := hashFile("plugin", plugin); err != nil {
		return "", err
	}
	if err := hashFile("sim", sim); err != nil {
		return "", err
	}
	for _, c := range competitors {
		if err := hashFile("competitor "+c.Key+" "+c.Repository+" "+c.Commit, c.Binary); err != nil {
			return "", err
		}
	}
	ignored := map[string]bool{"out": true, "chart": true, "json": true, "checkpoint": true, "work": true, "plugin": true, "sim": true}
	var set []string
	flag.Visit(func(f *flag.Flag) {
		if !ignored[f.Name] {
			set = append(set, f.Name+"="+f.Value.String())
		}
	})
	sort.Strings(set)
	fmt.Fprintf(h, "flags %s\n", strings.Join(set, " "))
	return hex.EncodeToString(h.Sum(nil)), nil
}

// resume loads the saved run into r when it was made with the same
// fingerprint; the contenders keep what only this process has (how to
// configure them) and get back what the saved parts recorded of them.
// It returns false (and logs why) when there is nothing to resume.
func (cp *checkpoint) resume(r *report) bool {
	data, err := os.ReadFile(cp.path)
	if err != nil {
		if !os.IsNotExist(err) {
			logf("checkpoint %s: could not read it (%v); starting from the beginning", cp.path, err)
		}
		return false
	}
	var saved report
	if err := json.Unmarshal(data, &saved); err != nil {
		logf("checkpoint %s: could not read it (%v); starting from the beginning", cp.path, err)
		return false
	}
	if saved.Fingerprint != cp.fingerprint {
		logf("checkpoint %s: made with other binaries or flags; starting from the beginning", cp.path)
		return false
	}
	byKey := make(map[string]*contender, len(saved.Contenders))
	for _, c := range saved.Contenders {
		byKey[c.Key] = c
	}
	for _, c := range r.Contenders {
		if s := byKey[c.Key]; s != nil {
			c.Settings, c.Incidents, c.Operations = s.Settings, s.Incidents, s.Operations
		}
	}
	saved.Contenders = r.Contenders
	*r = saved
	logf("checkpoint %s: resuming after %d finished parts (%s); delete the file to start over", cp.path, len(r.Parts), strings.Join(r.done(), ", "))
	return true
}

// done lists the units finished so far.
func (r *report) done() []string {
	units := make([]string, len(r.Parts))
	for i, part := range r.Parts {
		units[i] = part.Unit
	}
	return units
}

func (r *report) finished(unit string) bool {
	for _, part := range r.Parts {
		if part.Unit == unit {
			return true
		}
	}
	return false
}

// part runs one unit unless an earlier run finished it, records it, and
// saves the checkpoint (cp may be nil: no checkpoint).
func (cp *checkpoint) part(r *report, unit string, run func()) {
	if r.finished(unit) {
		logf("== %s: finished in an earlier run", unit)
		return
	}
	before, beforeErr := readCPUTimes()
	started := time.Now().UTC()
	partLag.take()
	run()
	lag := partLag.take()
	part := runPart{Unit: unit, Started: started, Ended: time.Now().UTC(), StealPercent: -1, SimLag: &lag}
	if after, err := readCPUTimes(); err == nil && beforeErr == nil {
		part.StealPercent = after.stealPercentSince(before)
	}
	r.Parts = append(r.Parts, part)
	if cp == nil {
		return
	}
	if err := cp.save(r); err != nil {
		logf("checkpoint %s: %v (the run goes on without it)", cp.path, err)
	}
}

// save writes the report so far, replacing the file only once the new one
// is complete.
func (cp *checkpoint) save(r *report) error {
	r.Fingerprint = cp.fingerprint
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("could not encode the checkpoint: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(cp.path), ".checkpoint-*")
	if err != nil {
		return fmt.Errorf("could not write the checkpoint: %w", err)
	}
	defer os.Remove(tmp.Name())
	// Readable like the -json results (CreateTemp makes it private).
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return fmt.Errorf("could not write the checkpoint: %w", err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("could not write the checkpoint: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("could not write the checkpoint: %w", err)
	}
	if err := os.Rename(tmp.Name(), cp.path); err != nil {
		return fmt.Errorf("could not write the checkpoint: %w", err)
	}
	return nil
}

// cpuTimes are the machine-wide CPU counters of /proc/stat, in ticks.
type cpuTimes struct {
	total, steal uint64
}

func readCPUTimes() (cpuTimes, error) {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuTimes{}, err
	}
	return parseCPUTimes(string(data))
}

// parseCPUTimes reads the first line: cpu user nice system idle iowait irq
// softirq steal [guest guest_nice]; guest time is already in user.
func parseCPUTimes(stat string) (cpuTimes, error) {
	line, _, _ := strings.Cut(stat, "\n")
	fields := strings.Fields(line)
	if len(fields) < 9 || fields[0] != "cpu" {
		return cpuTimes{}, fmt.Errorf("could not read /proc/stat: unexpected first line %q", line)
	}
	var t cpuTimes
	for i, field := range fields[1:9] {
		n, err := strconv.ParseUint(field, 10, 64)
		if err != nil {
			return cpuTimes{}, fmt.Errorf("could not read /proc/stat: %q is not a number", field)
		}
		t.total += n
		if i == 7 {
			t.steal = n
		}
	}
	return t, nil
}

func (t cpuTimes) stealPercentSince(before cpuTimes) float64 {
	if t.total <= before.total {
		return 0
	}
	return float64(t.steal-before.steal) * 100 / float64(t.total-before.total)
}
