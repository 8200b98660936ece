// Command benchreport runs the side-by-side benchmarks of issues 7 and 14
// through the real fleeting host (gitlab.com/gitlab-org/fleeting, go-plugin)
// against pve-sim, for our binary and the prebuilt binaries of competing
// Proxmox fleeting plugins given with -competitor, and writes
// docs/benchmarks.md with a chart. With a seed-lineage competitor it also
// runs the switch-over from the seed of issue 12 (switchover.go): the seed's
// binary provisions, is killed, and ours must take over its VMs. Numbers are printed and recorded, never
// asserted. Every call to a plugin has a deadline; a plugin that exits,
// panics or hangs is killed, recorded, and the run goes on.
//
// Usually run through scripts/bench-report, which builds our binaries.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"
)

type report struct {
	Started time.Time `json:"started"`
	Command string    `json:"command"`
	Quick   bool      `json:"quick"`
	// Side by side: the scale and fault runs of all plugins ran at once,
	// each plugin against its own simulator.
	SideBySide bool `json:"side_by_side"`
	// RunnerTurns: Update and Increase were called in turn, never at once,
	// and Increase was waited for as long as the scenario's budget lasted,
	// as Runner's provisioner does (earlier runs polled Update during
	// Increase and gave Increase 2 minutes).
	RunnerTurns bool `json:"runner_turns,omitempty"`
	// RealTimeTickets: a PVE ticket lasted two hours of the wall clock in
	// every scenario; older runs let it last two simulated hours.
	RealTimeTickets bool              `json:"real_time_tickets,omitempty"`
	Machine         machine           `json:"machine"`
	Versions        map[string]string `json:"versions"`
	Contenders      []*contender      `json:"contenders"`
	// NotGiven are the known competitors with no binary in this run;
	// Skipped were given but left out by -competitors.
	NotGiven    []string        `json:"not_given,omitempty"`
	Skipped     []string        `json:"skipped,omitempty"`
	LinkedScale float64         `json:"linked_time_scale"`
	FullScale   float64         `json:"full_time_scale"`
	APIScale    float64         `json:"api_time_scale"`
	CloneLimit  int             `json:"clone_limit"`
	FaultRate   float64         `json:"fault_rate"`
	Timings     timings         `json:"timings"`
	Footprints  []footprint     `json:"footprints"`
	APICost     []apiCostResult `json:"api_cost"`
	// MetricsOverhead is the API cost of ours again with metrics_listen set
	// and /metrics scraped every metricsScrapeEvery Updates.
	MetricsOverhead []apiCostResult `json:"metrics_overhead,omitempty"`
	Scale           []scaleResult   `json:"scale"`
	// Faults is the fault comparison, one result per plugin.
	Faults []faultResult `json:"faults,omitempty"`
	// The runs on several nodes (multinode.go): the fault comparison on
	// three nodes with local storage, the time to N running on three nodes
	// with local storage and on one with shared storage, and the API cost
	// over five nodes.
	FaultsNodes  []faultResult     `json:"faults_nodes,omitempty"`
	ToRunning    []toRunningResult `json:"to_running,omitempty"`
	APICostNodes []apiCostResult   `json:"api_cost_nodes,omitempty"`
	// Scenarios are the ones this run was limited to (-scenarios).
	Scenarios  []string    `json:"scenarios"`
	Switchover *switchover `json:"switchover,omitempty"`
	Elapsed    float64     `json:"elapsed_seconds"`
	// Parts are the finished parts of the run (checkpoint.go); Resumed
	// counts the times an interrupted run went on from its checkpoint.
	Parts       []runPart `json:"parts,omitempty"`
	Resumed     int       `json:"resumed,omitempty"`
	Fingerprint string    `json:"fingerprint,omitempty"`
}

type machine struct {
	CPUs   int    `json:"cpus"`
	CPU    string `json:"cpu"`
	Memory string `json:"memory"`
	Kernel string `json:"kernel"`
}

// plan is what one run measures, for every contender alike.
type plan struct {
	simBinary                        string
	sizes, apiSizes                  []int
	linkedScale, fullScale, apiScale float64
	cloneLimit                       int
	faultRate                        float64
	profiles                         []bool // full clone or not
	handshakeRuns                    int
	skipAPICost                      bool
	// toRunningN is the size of time-to-running; nodeAPISizes are the
	// sizes of api-multinode.
	toRunningN   int
	nodeAPISizes []int
	// scenarios are the measurements to run (-scenarios).
	scenarios map[string]bool
	// switchoverWait is the pause between the seed's kill and our start.
	switchoverWait time.Duration
	// dir makes a fresh scratch directory for one measurement.
	dir func(what string) string
}

const usage = `benchreport runs the side-by-side benchmarks through the real fleeting host
against pve-sim and writes docs/benchmarks.md and its chart. Usually run
through scripts/bench-report.

Competitors are prebuilt binaries, built by whoever runs the benchmark from
the competitor's public repository; this repository has no recipe for that.
Give each with -competitor, and say what it was built from:

  -competitor 'seed=/path/to/fleeting-plugin-proxmox,repo=github.com/LukasK32/fleeting-plugin-proxmox,commit=229b964'

NAME is one of: %s.
repo defaults to the competitor's known public repository; commit is
reported as "not given" when absent. The report lists the competitors that
were not given.

Flags:
`

func main() {
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), usage, knownKeys())
		flag.PrintDefaults()
	}
	plugin := flag.String("plugin", "", "our plugin binary (release build)")
	simBinary := flag.String("sim", "", "the pve-sim binary (release build)")
	out := flag.String("out", "docs/benchmarks.md", "the report to write")
	chart := flag.String("chart", "docs/benchmarks.svg", "the chart to write (linked from the report)")
	raw := flag.String("json", "", "also write the raw results as JSON here")
	quick := flag.Bool("quick", false, "a short profile (n = 1, 5; API cost at 10, 100, over five nodes at 100; time to 10 running; linked clones only)")
	sideBySide := flag.Bool("side-by-side", true, "run the scale and fault scenarios of all plugins at once, each against its own simulator (footprint and API cost always run one plugin at a time)")
	sizesFlag := flag.String("sizes", "1,5,20,50", "instance counts for scale-up and scale-down")
	apiSizesFlag := flag.String("api-sizes", "10,100,1000,2000", "instance counts for the API cost")
	nodeAPISizesFlag := flag.String("multinode-api-sizes", "2000", "instance counts for the API cost over five nodes (api-multinode)")
	toRunningN := flag.Int("to-running-n", 30, "instance count of time-to-running (three nodes with local storage vs one node with shared storage)")
	linkedScale := flag.Float64("linked-scale", 2, "time scale (simulated s per real s) of the linked-clone profile")
	fullScale := flag.Float64("full-scale", 5, "time scale of the full-clone profile")
	apiScale := flag.Float64("api-scale", 20, "time scale of the API-cost run")
	cloneLimit := flag.Int("clone-limit", 4, "parallel clones configured for every contender that has the setting")
	faultRate := flag.Float64("fault-rate", 0.05, "fraction of API requests answered 503 in the fault runs")
	profilesFlag := flag.String("profiles", "linked,full", "clone profiles for scale-up and scale-down")
	handshakeRuns := flag.Int("handshake-runs", 20, "exec → handshake runs per plugin (the median is reported)")
	scenariosFlag := flag.String("scenarios", "all", "which measurements to run: all, or comma-separated of "+strings.Join(allScenarios, ", ")+
		" (switchover runs only with a seed-lineage competitor)")
	switchoverWait := flag.Duration("switchover-wait", 0, "switchover: pause between the seed's kill and our plugin's start (0: at once, as a restarted Runner does)")
	var given competitorFlags
	flag.Var(&given, "competitor", "NAME=BINARY[,repo=REPOSITORY][,commit=COMMIT]: a competitor's prebuilt binary and what it was built from (repeatable)")
	only := flag.String("competitors", "all", "which of the given competitors to run: all, none, or comma-separated names")
	fromJSON := flag.String("from-json", "", "only re-render the report and chart from the raw results of an earlier run (-json)")
	work := flag.String("work", "", "scratch directory (default: a new temporary one, removed at the end)")
	checkpointPath := flag.String("checkpoint", "", "save the results after every finished part here; run the same command again (same binaries and flags) to go on after the last finished part. Removed once the report is written")
	flag.Parse()
	if *fromJSON != "" {
		data, err := os.ReadFile(*fromJSON)
		if err != nil {
			fatal(fmt.Errorf("could not read %s: %w", *fromJSON, err))
		}
		var r report
		if err := json.Unmarshal(data, &r); err != nil {
			fatal(fmt.Errorf("could not read %s: %w", *fromJSON, err))
		}
		write(&r, *out, *chart, "")
		return
	}
	if *plugin == "" || *simBinary == "" {
		fmt.Fprintln(os.Stderr, "benchreport: -plugin and -sim are required (see scripts/bench-report, or -h)")
		os.Exit(2)
	}
	for _, name := range strings.Split(*only, ",") {
		name = strings.TrimSpace(name)
		if _, ok := findKnown(name); !ok && name != "all" && name != "none" && name != "" {
			fatal(fmt.Errorf("could not read -competitors %q: unknown name %q (known: %s)", *only, name, knownKeys()))
		}
	}
	scenarios, err := parseScenarios(*scenariosFlag)
	if err != nil {
		fatal(err)
	}
	sizes, apiSizes, nodeAPISizes := ints(*sizesFlag), ints(*apiSizesFlag), ints(*nodeAPISizesFlag)
	if *toRunningN <= 0 {
		fatal(fmt.Errorf("-to-running-n %d is not a positive number", *toRunningN))
	}
	if *quick {
		sizes, apiSizes, nodeAPISizes, *toRunningN = []int{1, 5}, []int{10, 100}, []int{100}, 10
	}
	scratch := *work
	if scratch == "" {
		dir, err := os.MkdirTemp("", "benchreport-")
		if err != nil {
			fatal(fmt.Errorf("could not create a scratch directory: %w", err))
		}
		defer os.RemoveAll(dir)
		scratch = dir
	}

	r := &report{Started: time.Now().UTC(), Command: reRunCommand(), Quick: *quick, Machine: describeMachine(), Versions: versions(),
		LinkedScale: *linkedScale, FullScale: *fullScale, APIScale: *apiScale, CloneLimit: *cloneLimit, FaultRate: *faultRate, Timings: realisticTimings, RunnerTurns: true, RealTimeTickets: true}
	r.Contenders = append(r.Contenders, ours(*plugin))
	var skipped []*contender
	for _, c := range given {
		if selected(*only, c.Key) {
			r.Contenders = append(r.Contenders, c)
			logf("competitor %s: %s (%s at %s)", c.Name, c.Binary, c.Repository, orText(c.Commit, "commit not given"))
		} else {
			skipped = append(skipped, c)
		}
	}
	r.NotGiven = notGiven(r.Contenders[1:])
	r.Skipped = names(skipped)

	p := plan{simBinary: *simBinary, sizes: sizes, apiSizes: apiSizes, linkedScale: *linkedScale, fullScale: *fullScale,
		apiScale: *apiScale, cloneLimit: *cloneLimit, faultRate: *faultRate, handshakeRuns: *handshakeRuns, scenarios: scenarios, switchoverWait: *switchoverWait,
		toRunningN: *toRunningN, nodeAPISizes: nodeAPISizes}
	for _, name := range allScenarios {
		if scenarios[name] {
			r.Scenarios = append(r.Scenarios, name)
		}
	}
	for _, profile := range strings.Split(*profilesFlag, ",") {
		if !*quick || profile == "linked" {
			p.profiles = append(p.profiles, profile == "full")
		}
	}
	var cp *checkpoint
	if *checkpointPath != "" {
		fingerprint, err := runFingerprint(*plugin, *simBinary, r.Contenders[1:])
		if err != nil {
			fatal(err)
		}
		cp = &checkpoint{path: *checkpointPath, fingerprint: fingerprint}
		if cp.resume(r) {
			r.Resumed++
		}
	}
	var dirs sync.Mutex
	run := 0
	p.dir = func(what string) string {
		dirs.Lock()
		defer dirs.Unlock()
		run++
		return filepath.Join(scratch, fmt.Sprintf("%03d-%s", run, what))
	}
	if *sideBySide {
		// CPU and memory first, one plugin at a time (nothing else runs);
		// then the long scale and fault runs of all plugins at once, each
		// against its own simulator (their timings come from the simulated
		// clock, so running them side by side costs minutes, not hours).
		r.SideBySide = true
		for _, c := range r.Contenders {
			cp.part(r, "footprint and API cost of "+c.Key, func() { runMeasured(r, c, p) })
		}
		cp.part(r, "scale and fault runs, side by side", func() {
			timed := make([]timedResults, len(r.Contenders))
			var wg sync.WaitGroup
			for i, c := range r.Contenders {
				wg.Add(1)
				go func() {
					defer wg.Done()
					timed[i] = runTimed(c, p)
				}()
			}
			wg.Wait()
			for _, t := range timed {
				t.addTo(r)
			}
		})
	} else {
		for _, c := range r.Contenders {
			cp.part(r, "every scenario of "+c.Key, func() { runContender(r, c, p) })
		}
	}
	if p.runs("api") {
		cp.part(r, "API cost of ours with metrics", func() {
			logf("== ours (Rust), metrics on")
			m, err := oursWithMetrics(*plugin)
			if err != nil {
				logf("  metrics overhead: %v", err)
				return
			}
			r.MetricsOverhead = apiCost(m, p.simBinary, p.dir("api-metrics"), p.apiSizes, p.apiScale, layoutUsual)
			for _, result := range r.MetricsOverhead {
				logf("  API cost with metrics N=%d: %.2f requests/Update, %.2f ms CPU/Update %s",
					result.N, result.RequestsPerUpdate, result.CPUMillisPerUpdate, result.Error)
			}
		})
	}
	cp.part(r, "switch-over", func() { r.Switchover = runSwitchover(r, p, skipped) })
	r.Elapsed = 0
	for _, part := range r.Parts {
		r.Elapsed += part.Ended.Sub(part.Started).Seconds()
	}

	write(r, *out, *chart, *raw)
	if cp != nil {
		if err := os.Remove(cp.path); err != nil && !os.IsNotExist(err) {
			logf("checkpoint %s: could not remove it: %v", cp.path, err)
		}
	}
}

// runContender runs every scenario of the plan for one plugin. A plugin
// that exits, panics or hangs fails the scenario it was in (recorded in
// c.Incidents); the next scenario starts a fresh process.
func runContender(r *report, c *contender, p plan) {
	logf("== %s", c.Name)
	ran := false
	for _, name := range allScenarios {
		ran = ran || name != "switchover" && p.runs(name)
	}
	if !ran {
		return
	}
	runMeasured(r, c, p)
	runTimed(c, p).addTo(r)
}

// timedResults are one plugin's scale, fault and time-to-running runs.
type timedResults struct {
	scale       []scaleResult
	faults      []faultResult
	faultsNodes []faultResult
	toRunning   []toRunningResult
}

func (t timedResults) addTo(r *report) {
	r.Scale = append(r.Scale, t.scale...)
	r.Faults = append(r.Faults, t.faults...)
	r.FaultsNodes = append(r.FaultsNodes, t.faultsNodes...)
	r.ToRunning = append(r.ToRunning, t.toRunning...)
}

// runMeasured measures what the CPU and memory of the machine decide:
// footprint (handshake, idle RSS) and API cost per Update.
func runMeasured(r *report, c *contender, p plan) {
	if r.SideBySide {
		logf("== %s: footprint and API cost", c.Name)
	}
	fp := footprint{Contender: c.Name, HandshakeRuns: p.handshakeRuns}
	if info, err := os.Stat(c.Binary); err == nil {
		fp.BinaryBytes = info.Size()
	}
	if p.runs("footprint") {
		var errs []string
		var err error
		if fp.HandshakeMillis, fp.HandshakeKilled, err = handshakeMillis(c.Binary, p.handshakeRuns); err != nil {
			errs = append(errs, "handshake: "+err.Error())
		}
		if fp.IdleRSSKB, fp.IdleAnonKB, err = idleRSS(c, p.simBinary, p.dir("idle")); err != nil {
			errs = append(errs, "idle RSS: "+err.Error())
		}
		fp.Error = strings.Join(errs, "; ")
		logf("  handshake %.1f ms (%d of %d runs needed SIGKILL), idle RSS %d KB (%d KB anonymous), binary %d bytes %s",
			fp.HandshakeMillis, fp.HandshakeKilled, fp.HandshakeRuns, fp.IdleRSSKB, fp.IdleAnonKB, fp.BinaryBytes, fp.Error)
	}

	var oneNode []apiCostResult
	if !p.skipAPICost && p.runs("api") {
		oneNode = apiCost(c, p.simBinary, p.dir("api"), p.apiSizes, p.apiScale, layoutUsual)
		for _, result := range oneNode {
			logf("  API cost N=%d: %.2f requests/Update, %.2f ms CPU/Update, %.1f ms/Update, RSS %d KB %s",
				result.N, result.RequestsPerUpdate, result.CPUMillisPerUpdate, result.UpdateMillis, result.RSSKB, result.Error)
			if result.N == 1000 && result.Error == "" {
				fp.RSS1000KB = result.RSSKB
			}
			r.APICost = append(r.APICost, result)
		}
	}
	if !p.skipAPICost && p.runs("api-multinode") {
		results, skipped := multinodeNotWorthRunning(c.Name, oneNode, p.nodeAPISizes, layoutLocal5)
		if !skipped {
			results = apiCost(c, p.simBinary, p.dir("api-nodes"), p.nodeAPISizes, p.apiScale, layoutLocal5)
		}
		for _, result := range results {
			logf("  API cost over five nodes N=%d: %.2f requests/Update, %.2f ms CPU/Update, %.1f ms/Update, RSS %d KB, per node %s %s",
				result.N, result.RequestsPerUpdate, result.CPUMillisPerUpdate, result.UpdateMillis, result.RSSKB, perNodeText(result.PerNode), result.Error)
			r.APICostNodes = append(r.APICostNodes, result)
		}
	}
	if p.runs("footprint") {
		r.Footprints = append(r.Footprints, fp)
	}
}

// multinodeNotWorthRunning says whether the five-node API cost can be
// skipped: when the plugin already failed on one node at a size no larger
// than the five-node step's first, growing further over five nodes would
// only wait out the same deadline (LeCyreaxYT's cost a run 32 minutes).
// The skip is recorded as that step's failure, with the one-node reason.
func multinodeNotWorthRunning(contender string, oneNode []apiCostResult, sizes []int, l layout) ([]apiCostResult, bool) {
	if len(sizes) == 0 {
		return nil, false
	}
	for _, result := range oneNode {
		if result.Error != "" && result.N <= sizes[0] {
			return []apiCostResult{{Contender: contender, N: sizes[0], Layout: l.Key,
				Error: fmt.Sprintf("not run: the plugin already failed at N = %d on one node (%s)", result.N, result.Error)}}, true
		}
	}
	return nil, false
}

// runTimed runs the scale-up/down and fault scenarios of one plugin, whose
// timings follow the simulated clock.
func runTimed(c *contender, p plan) timedResults {
	var t timedResults
	for _, faults := range []float64{0, p.faultRate} {
		if !p.runs("scale") {
			break
		}
		for _, full := range p.profiles {
			scale := p.linkedScale
			if full {
				scale = p.fullScale
			}
			for _, n := range p.sizes {
				result := scaleUpDown(c, p.simBinary, p.dir("scale"), realisticTimings, full, n, p.cloneLimit, scale, faults)
				logf("  %s scale %s n=%d faults=%.0f%%: up %.1f s (ideal %.1f s, %.2f×), down %.1f s, %d requests %s %s",
					c.Name, result.Profile, n, faults*100, result.Up, result.Ideal, result.Ratio(), result.Down, result.Requests, result.Error, result.DownError)
				t.scale = append(t.scale, result)
			}
		}
	}
	if p.runs("time-to-running") {
		for _, l := range toRunningLayouts {
			result := timeToRunning(c, p.simBinary, p.dir("to-running-"+l.Key), l, p.toRunningN, p.cloneLimit, p.linkedScale)
			if result.NotRun != "" {
				logf("  %s time to %d running, %s: %s", c.Name, result.N, l.title(), result.NotRun)
			} else {
				logf("  %s time to %d running, %s: Init %.1f s, all accepted %.1f s (first Increase %d), running %.1f s, per node %s, %d template copies, %d requests %s",
					c.Name, result.N, l.title(), result.Init, result.Accepted, result.FirstIncrease, result.Running, perNodeText(result.PerNode), len(result.Copies), result.Requests, result.Error)
			}
			t.toRunning = append(t.toRunning, result)
		}
	}
	if p.runs("faults") {
		result := faultComparison(c, p.simBinary, p.dir("faults"), p.apiScale, layoutUsual)
		logFaults(c, "faults", result)
		t.faults = append(t.faults, result)
	}
	if p.runs("faults-multinode") {
		result := faultComparison(c, p.simBinary, p.dir("faults-nodes"), p.apiScale, layoutLocal3)
		logFaults(c, "faults on three nodes", result)
		t.faultsNodes = append(t.faultsNodes, result)
	}
	return t
}

func logFaults(c *contender, what string, result faultResult) {
	logf("  %s %s: %d requested, %d accepted, %d ran, peak %d running, %d restarts, %d never came back, leaked %v, %d orphaned disks, foreign touched %v, %d crashes, ran per node %s, template copies %v %s",
		c.Name, what, result.Requested, result.Accepted, result.Ran, result.PeakRunning, result.Restarts, result.NeverCameBack,
		result.LeakedVMs, result.OrphanedDisks, result.ForeignTouched, result.Crashes, perNodeText(result.RanPerNode), result.TemplateCopies, result.Error)
}

// runs reports whether the plan includes a scenario (all when not limited).
func (p plan) runs(name string) bool { return p.scenarios == nil || p.scenarios[name] }

// allScenarios are the measurements -scenarios can choose from.
var allScenarios = []string{"footprint", "api", "api-multinode", "scale", "time-to-running", "faults", "faults-multinode", "switchover"}

func parseScenarios(text string) (map[string]bool, error) {
	out := map[string]bool{}
	for _, name := range strings.Split(text, ",") {
		name = strings.TrimSpace(name)
		switch {
		case name == "all":
			for _, n := range allScenarios {
				out[n] = true
			}
		case name == "":
		default:
			known := false
			for _, n := range allScenarios {
				known = known || n == name
			}
			if !known {
				return nil, fmt.Errorf("could not read -scenarios %q: unknown scenario %q (known: all, %s)", text, name, strings.Join(allScenarios, ", "))
			}
			out[name] = true
		}
	}
	return out, nil
}

// runSwitchover runs the switch-over from the seed once per seed-lineage
// competitor given, or says why it did not.
func runSwitchover(r *report, p plan, skipped []*contender) *switchover {
	if !p.runs("switchover") {
		return &switchover{NotRun: "not run: left out by -scenarios"}
	}
	seeds := seedLineage(r)
	if len(seeds) == 0 {
		reason := "not run: it needs the binary of a seed-lineage plugin (the LukasK32 config format: " + strings.Join(lineageKeys(), ", ") +
			"), given with -competitor 'seed=BINARY,commit=...'; none was given"
		for _, c := range skipped {
			if c.Style == styleLukasK32 {
				reason = "not run: the seed-lineage competitor " + c.Name + " was given but left out by -competitors"
			}
		}
		logf("== switch-over from the seed: %s", reason)
		return &switchover{NotRun: reason}
	}
	out := &switchover{}
	for _, seed := range seeds {
		logf("== switch-over from %s to %s", seed.Name, r.Contenders[0].Name)
		out.Runs = append(out.Runs, switchOver(seed, r.Contenders[0], p.simBinary, p.dir("switchover"), p.switchoverWait))
	}
	return out
}

func lineageKeys() []string {
	var keys []string
	for _, k := range knownCompetitors {
		if k.style == styleLukasK32 {
			keys = append(keys, k.key)
		}
	}
	return keys
}

// write saves the raw results (when asked), the chart and the report.
func write(r *report, out, chart, raw string) {
	if raw != "" {
		data, _ := json.MarshalIndent(r, "", "  ")
		if err := os.WriteFile(raw, data, 0o644); err != nil {
			fatal(err)
		}
	}
	if err := os.WriteFile(chart, []byte(renderChart(r)), 0o644); err != nil {
		fatal(err)
	}
	rel, err := filepath.Rel(filepath.Dir(out), chart)
	if err != nil {
		rel = chart
	}
	if err := os.WriteFile(out, []byte(renderMarkdown(r, rel)), 0o644); err != nil {
		fatal(err)
	}
	logf("wrote %s and %s", out, chart)
}

func selected(only, name string) bool {
	switch only {
	case "all":
		return true
	case "none", "":
		return false
	}
	for _, n := range strings.Split(only, ",") {
		if k, ok := findKnown(n); ok && k.key == name {
			return true
		}
	}
	return false
}

func ints(text string) []int {
	var out []int
	for _, part := range strings.Split(text, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(part))
		if err != nil || n <= 0 {
			fatal(fmt.Errorf("%q is not a list of positive numbers", text))
		}
		out = append(out, n)
	}
	return out
}

func describeMachine() machine {
	m := machine{CPUs: numCPU()}
	if raw, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(raw), "\n") {
			if strings.HasPrefix(line, "model name") {
				m.CPU = strings.TrimSpace(line[strings.IndexByte(line, ':')+1:])
				break
			}
		}
	}
	if raw, err := os.ReadFile("/proc/meminfo"); err == nil {
		fields := strings.Fields(strings.SplitN(string(raw), "\n", 2)[0])
		if kb, err := strconv.Atoi(fields[1]); err == nil {
			m.Memory = fmt.Sprintf("%.1f GiB", float64(kb)/(1<<20))
		}
	}
	m.Kernel = output("uname", "-sr")
	return m
}

func versions() map[string]string {
	return map[string]string{
		"rustc":  output("rustc", "--version"),
		"go":     output("go", "version"),
		"commit": gitDescribe(),
		"fleeting host": "gitlab.com/gitlab-org/fleeting/fleeting " + moduleVersion("gitlab.com/gitlab-org/fleeting/fleeting") +
			", github.com/hashicorp/go-plugin " + moduleVersion("github.com/hashicorp/go-plugin"),
	}
}

// moduleVersion is the version of a dependency this program was built with,
// i.e. the fleeting host that drove the plugins.
func moduleVersion(module string) string {
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, dep := range info.Deps {
			if dep.Path == module {
				if dep.Replace != nil {
					return dep.Replace.Version
				}
				return dep.Version
			}
		}
	}
	return "unknown"
}

// builtFrom is the commit our plugin binary reports (`--version`), which
// need not be the checkout's: BENCH_PLUGIN may be a release binary built
// from an earlier commit. The checkout's describe is the fallback.
func builtFrom(binary string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if text, err := exec.CommandContext(ctx, binary, "--version").Output(); err == nil {
		if revision := revisionOf(string(text)); revision != "" {
			return revision
		}
	}
	return gitDescribe()
}

// revisionOf reads the `Git revision:` line of our `--version` output.
func revisionOf(version string) string {
	for _, line := range strings.Split(version, "\n") {
		if revision, ok := strings.CutPrefix(line, "Git revision:"); ok {
			return strings.TrimSpace(revision)
		}
	}
	return ""
}

func gitDescribe() string {
	text, err := exec.Command("git", "describe", "--always", "--dirty", "--tags").Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(text))
}

func output(name string, args ...string) string {
	text, err := exec.Command(name, args...).Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(text))
}

func reRunCommand() string {
	if command := os.Getenv("BENCH_REPORT_COMMAND"); command != "" {
		return command
	}
	return strings.Join(os.Args, " ")
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, time.Now().Format("15:04:05 ")+format+"\n", args...)
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "benchreport:", err)
	os.Exit(1)
}
