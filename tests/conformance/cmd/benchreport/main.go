// Command benchreport runs the side-by-side benchmarks of issue 7 through
// the real fleeting host (gitlab.com/gitlab-org/fleeting, go-plugin) against
// pve-sim, for our binary and every public Proxmox fleeting plugin that
// builds from the Go module proxy, and writes docs/benchmarks.md with a chart.
// Numbers are printed and recorded, never asserted.
//
// Usually run through scripts/bench-report, which builds the release binaries.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"time"
)

type report struct {
	Started     time.Time         `json:"started"`
	Command     string            `json:"command"`
	Quick       bool              `json:"quick"`
	Machine     machine           `json:"machine"`
	Versions    map[string]string `json:"versions"`
	Contenders  []*contender      `json:"contenders"`
	LinkedScale float64           `json:"linked_time_scale"`
	FullScale   float64           `json:"full_time_scale"`
	APIScale    float64           `json:"api_time_scale"`
	CloneLimit  int               `json:"clone_limit"`
	FaultRate   float64           `json:"fault_rate"`
	Timings     timings           `json:"timings"`
	Footprints  []footprint       `json:"footprints"`
	APICost     []apiCostResult   `json:"api_cost"`
	Scale       []scaleResult     `json:"scale"`
	Elapsed     float64           `json:"elapsed_seconds"`
}

type machine struct {
	CPUs   int    `json:"cpus"`
	CPU    string `json:"cpu"`
	Memory string `json:"memory"`
	Kernel string `json:"kernel"`
}

func main() {
	plugin := flag.String("plugin", "", "our plugin binary (release build)")
	simBinary := flag.String("sim", "", "the pve-sim binary (release build)")
	out := flag.String("out", "docs/benchmarks.md", "the report to write")
	chart := flag.String("chart", "docs/benchmarks.svg", "the chart to write (linked from the report)")
	raw := flag.String("json", "", "also write the raw results as JSON here")
	quick := flag.Bool("quick", false, "a short profile (n = 1, 5; API cost at 10, 100; linked clones only)")
	sizesFlag := flag.String("sizes", "1,5,20,50", "instance counts for scale-up and scale-down")
	apiSizesFlag := flag.String("api-sizes", "10,100,1000,2000", "instance counts for the API cost")
	linkedScale := flag.Float64("linked-scale", 2, "time scale (simulated s per real s) of the linked-clone profile")
	fullScale := flag.Float64("full-scale", 5, "time scale of the full-clone profile")
	apiScale := flag.Float64("api-scale", 20, "time scale of the API-cost run")
	cloneLimit := flag.Int("clone-limit", 4, "parallel clones configured for every contender that has the setting")
	faultRate := flag.Float64("fault-rate", 0.05, "fraction of API requests answered 503 in the fault runs")
	profilesFlag := flag.String("profiles", "linked,full", "clone profiles for scale-up and scale-down")
	only := flag.String("competitors", "all", "competitors to try: all, none, or comma-separated names")
	var sources sourceFlags
	flag.Var(&sources, "source", "NAME=DIR: build competitor NAME from a local checkout instead of the module proxy (repeatable)")
	fromJSON := flag.String("from-json", "", "only re-render the report and chart from the raw results of an earlier run (-json)")
	work := flag.String("work", "", "scratch directory (default: a new temporary one, removed at the end)")
	flag.Parse()
	if *fromJSON != "" {
		data, err := os.ReadFile(*fromJSON)
		if err != nil {
			fatal(err)
		}
		var r report
		if err := json.Unmarshal(data, &r); err != nil {
			fatal(fmt.Errorf("could not read %s: %w", *fromJSON, err))
		}
		write(&r, *out, *chart, "")
		return
	}
	if *plugin == "" || *simBinary == "" {
		fmt.Fprintln(os.Stderr, "benchreport: -plugin and -sim are required (see scripts/bench-report)")
		os.Exit(2)
	}
	sizes, apiSizes := ints(*sizesFlag), ints(*apiSizesFlag)
	if *quick {
		sizes, apiSizes = []int{1, 5}, []int{10, 100}
	}
	scratch := *work
	if scratch == "" {
		dir, err := os.MkdirTemp("", "benchreport-")
		if err != nil {
			fatal(err)
		}
		defer os.RemoveAll(dir)
		scratch = dir
	}

	r := &report{Started: time.Now().UTC(), Command: reRunCommand(), Quick: *quick, Machine: describeMachine(), Versions: versions(),
		LinkedScale: *linkedScale, FullScale: *fullScale, APIScale: *apiScale, CloneLimit: *cloneLimit, FaultRate: *faultRate, Timings: realisticTimings}
	us := ours(*plugin)
	r.Contenders = append(r.Contenders, us)
	for _, c := range competitors() {
		if !selected(*only, c.Name) {
			continue
		}
		logf("building %s (%s)", c.Name, c.Module)
		c.build(filepath.Join(scratch, "bin"), sources[c.Name])
		if c.BuildError != "" {
			logf("  could not build %s: %s", c.Name, c.BuildError)
		} else {
			logf("  built %s %s", c.Name, c.Version)
		}
		r.Contenders = append(r.Contenders, c)
	}

	run := 0
	dir := func(what string) string {
		run++
		return filepath.Join(scratch, fmt.Sprintf("%03d-%s", run, what))
	}
	for _, c := range r.Contenders {
		if c.Binary == "" {
			continue
		}
		logf("== %s", c.Name)
		fp := footprint{Contender: c.Name, HandshakeRuns: 20}
		if info, err := os.Stat(c.Binary); err == nil {
			fp.BinaryBytes = info.Size()
		}
		var err error
		if fp.HandshakeMillis, err = handshakeMillis(c.Binary, fp.HandshakeRuns); err != nil {
			fp.Error = "handshake: " + err.Error()
		}
		if fp.IdleRSSKB, fp.IdleAnonKB, err = idleRSS(c, *simBinary, dir("idle")); err != nil {
			fp.Error = strings.TrimPrefix(fp.Error+"; ", "; ") + "idle RSS: " + err.Error()
		}
		logf("  handshake %.1f ms, idle RSS %d KB (%d KB anonymous), binary %d bytes", fp.HandshakeMillis, fp.IdleRSSKB, fp.IdleAnonKB, fp.BinaryBytes)

		for _, result := range apiCost(c, *simBinary, dir("api"), apiSizes, *apiScale) {
			logf("  API cost N=%d: %.2f requests/Update, %.2f ms CPU/Update, %.1f ms/Update, RSS %d KB %s",
				result.N, result.RequestsPerUpdate, result.CPUMillisPerUpdate, result.UpdateMillis, result.RSSKB, result.Error)
			if result.N == 1000 && result.Error == "" {
				fp.RSS1000KB = result.RSSKB
			}
			r.APICost = append(r.APICost, result)
		}
		r.Footprints = append(r.Footprints, fp)

		var profiles []bool
		for _, p := range strings.Split(*profilesFlag, ",") {
			if !*quick || p == "linked" {
				profiles = append(profiles, p == "full")
			}
		}
		for _, faults := range []float64{0, *faultRate} {
			for _, full := range profiles {
				scale := *linkedScale
				if full {
					scale = *fullScale
				}
				for _, n := range sizes {
					result := scaleUpDown(c, *simBinary, dir("scale"), realisticTimings, full, n, *cloneLimit, scale, faults)
					logf("  scale %s n=%d faults=%.0f%%: up %.1f s (ideal %.1f s, %.2f×), down %.1f s, %d requests %s",
						result.Profile, n, faults*100, result.Up, result.Ideal, result.Ratio(), result.Down, result.Requests, result.Error)
					r.Scale = append(r.Scale, result)
				}
			}
		}
	}
	r.Elapsed = time.Since(r.Started).Seconds()

	write(r, *out, *chart, *raw)
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

type sourceFlags map[string]string

func (s *sourceFlags) String() string { return fmt.Sprint(map[string]string(*s)) }

func (s *sourceFlags) Set(value string) error {
	name, dir, ok := strings.Cut(value, "=")
	if !ok {
		return fmt.Errorf("-source takes NAME=DIR, got %q", value)
	}
	if *s == nil {
		*s = map[string]string{}
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	(*s)[name] = abs
	return nil
}

func selected(only, name string) bool {
	switch only {
	case "all":
		return true
	case "none", "":
		return false
	}
	for _, n := range strings.Split(only, ",") {
		if strings.EqualFold(strings.TrimSpace(n), name) || strings.HasPrefix(strings.ToLower(name), strings.ToLower(strings.TrimSpace(n))+" ") {
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

func gitDescribe() string { return gitDescribeIn(".") }

func gitDescribeIn(dir string) string {
	cmd := exec.Command("git", "describe", "--always", "--dirty", "--tags")
	cmd.Dir = dir
	text, err := cmd.Output()
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
