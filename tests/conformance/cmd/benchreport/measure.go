package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"gitlab.com/gitlab-org/fleeting/fleeting/provider"
)

// Runner's Update cadence while it expects instances is 2 s
// (update_interval_when_expecting); the benchmark polls faster so that the
// polling itself adds little to the measured latency.
const updateEvery = 250 * time.Millisecond

var connector = provider.Settings{ConnectorConfig: provider.ConnectorConfig{
	OS: "linux", Arch: "amd64", Protocol: provider.ProtocolSSH, Username: "fleeting", Keepalive: 30 * time.Second, Timeout: time.Minute,
}}

type scaleResult struct {
	Contender string  `json:"contender"`
	Profile   string  `json:"profile"` // linked or full
	FaultRate float64 `json:"fault_rate"`
	N         int     `json:"n"`
	TimeScale float64 `json:"time_scale"`
	// Simulated seconds from Increase(n) until n instances run with a known address.
	Up float64 `json:"up_seconds"`
	// The ideal critical path: ceil(n / clone limit) clones, then one boot and agent.
	Ideal float64 `json:"ideal_seconds"`
	// The same with unlimited parallel clones: one clone, then one boot and agent.
	IdealUnlimited float64 `json:"ideal_unlimited_seconds"`
	// Simulated seconds from Decrease until no instance VM is left in Proxmox.
	Down float64 `json:"down_seconds"`
	// ⌈n / delete limit⌉ × (stop + delete): deletions limited only by the configured limit.
	DownIdeal float64 `json:"down_ideal_seconds"`
	// Replaced counts instances the plugin gave up on before they ran
	// (reported deleting or deleted), which the host then asked for again.
	Replaced int `json:"replaced,omitempty"`
	// DownError is why scale-down did not finish (scale-up may have).
	DownError string `json:"down_error,omitempty"`
	Requests  int64  `json:"requests"`
	Injected  int64  `json:"injected_errors"`
	Error     string `json:"error,omitempty"`
}

func (r scaleResult) Ratio() float64 { return r.Up / r.Ideal }

// scaleUpDown measures Increase(n) → n running with addresses, then
// Decrease(all) → none left in Proxmox, on a fresh simulator.
func scaleUpDown(c *contender, simBinary, work string, t timings, full bool, n, cloneLimit int, scale, faultRate float64) scaleResult {
	scenario := fmt.Sprintf("scale-up %s n=%d faults=%.0f%%", map[bool]string{false: "linked", true: "full"}[full], n, faultRate*100)
	profile := "linked"
	clone := t.CloneLinked
	if full {
		profile, clone = "full", t.CloneFull
	}
	result := scaleResult{Contender: c.Name, Profile: profile, FaultRate: faultRate, N: n, TimeScale: scale,
		Ideal: math.Ceil(float64(n)/float64(cloneLimit))*clone + t.bootAndAgent(), IdealUnlimited: clone + t.bootAndAgent(),
		DownIdeal: math.Ceil(float64(n)/float64(cloneLimit)) * (t.Stop + t.Delete)}
	sim, err := startSimulator(simBinary, work, t, n, scale, 7)
	if err != nil {
		result.Error = err.Error()
		return result
	}
	defer sim.stop()
	defer c.recordOperations(sim)
	s, err := openSession(c, sim, work, scenario, runParams{maxInstances: n, fullClone: full, cloneLimit: cloneLimit})
	if err != nil {
		result.Error = err.Error()
		return result
	}
	defer s.close()
	if faultRate > 0 {
		if err := sim.injectTransientErrors(faultRate); err != nil {
			result.Error = err.Error()
			return result
		}
	}
	sim.resetCounters()
	budget := time.Duration((result.Ideal*6+120)/scale*float64(time.Second)) + 30*time.Second
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	defer cancel()

	started := time.Now()
	up := driveUp(ctx, s, sim, n, started)
	result.Error, result.Replaced = up.err, len(up.lost)
	addressed := up.addressed
	if result.Error == "" {
		result.Up = sim.simSeconds(time.Since(started))
	}
	if counters, err := sim.counters(); err == nil {
		result.Requests, result.Injected = counters.RequestsTotal, counters.Injected
	}
	if s.gone() {
		// Scale-down needs a live plugin; what it left behind is counted.
		if left, err := sim.instances(); err == nil && left > 0 {
			result.Error += fmt.Sprintf("; %d VMs left in Proxmox: %s", left, sim.leftovers())
		}
		return result
	}
	result.Down, err = scaleDown(s, sim, addressed)
	if err != nil {
		result.DownError = err.Error()
	}
	return result
}

// upDrive is one drive to n instances running with an address.
type upDrive struct {
	addressed, lost map[string]bool
	// firstAccepted is what the first Increase accepted; allAccepted is
	// when the plugin had first accepted n in all (zero: never).
	firstAccepted int
	allAccepted   time.Time
	// err is why n did not run.
	err string
}

// driveUp asks for n instances and calls Update until n run with an
// address, as Runner does: it asks again for what a plugin did not accept,
// and again for an instance the plugin gave up on (reported deleting or
// deleted before it ever ran). Like Runner's provisioner it never calls
// Update while an Increase is under way, and gives Increase what is left of
// the drive's budget rather than a deadline of its own.
func driveUp(ctx context.Context, s *session, sim *simulator, n int, started time.Time) upDrive {
	d := upDrive{addressed: map[string]bool{}, lost: map[string]bool{}}
	var mu sync.Mutex
	target, accepted, inFlight, calls := n, 0, n > 0, 0
	var lastErr error
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(limits.Increase)
	}
	stop := make(chan struct{})
	increaserDone := make(chan struct{})
	go func() {
		defer close(increaserDone)
		for ctx.Err() == nil && !s.gone() {
			mu.Lock()
			need := target - accepted
			inFlight = need > 0
			mu.Unlock()
			if need <= 0 {
				select {
				case <-stop:
					return
				case <-time.After(updateEvery):
				}
				continue
			}
			got, err := s.increaseWithin(ctx, need, time.Until(deadline)+time.Second)
			mu.Lock()
			accepted += got
			if calls == 0 {
				d.firstAccepted = got
			}
			calls++
			if accepted >= n && d.allAccepted.IsZero() {
				d.allAccepted = time.Now()
			}
			inFlight = false
			if err != nil {
				lastErr = err
			}
			mu.Unlock()
			if err != nil && got < need {
				time.Sleep(updateEvery)
			}
		}
	}()
	addressed, lost := d.addressed, d.lost
	for {
		mu.Lock()
		done := len(addressed) >= n && accepted >= target && !inFlight
		busy := inFlight
		mu.Unlock()
		if done {
			break
		}
		time.Sleep(updateEvery)
		if busy && ctx.Err() == nil && !s.gone() {
			// Runner's provisioner calls Update and Increase in turn from
			// one loop, never at once: a plugin whose Increase holds a lock
			// Update needs is not stalled by a call Runner would not make.
			continue
		}
		if s.gone() {
			d.err = fmt.Sprintf("%d of %d running with an address, then the %v", len(addressed), n, s.err())
			break
		}
		if ctx.Err() != nil {
			mu.Lock()
			d.err = fmt.Sprintf("%d of %d running with an address after %.0f s (simulated); last error: %v", len(addressed), n, sim.simSeconds(time.Since(started)), lastErr)
			mu.Unlock()
			break
		}
		states, err := s.states(ctx)
		if err != nil {
			mu.Lock()
			lastErr = err
			mu.Unlock()
			continue
		}
		for id, state := range states {
			if (state == provider.StateDeleting || state == provider.StateDeleted) && !addressed[id] && !lost[id] {
				lost[id] = true
				mu.Lock()
				target++
				mu.Unlock()
				continue
			}
			if state != provider.StateRunning || addressed[id] {
				continue
			}
			info, err := s.connectInfo(ctx, id)
			if err == nil && (info.InternalAddr != "" || info.ExternalAddr != "") {
				addressed[id] = true
			} else if err != nil {
				mu.Lock()
				lastErr = err
				mu.Unlock()
			}
		}
	}
	close(stop)
	select { // bounded: every Increase has a deadline
	case <-increaserDone:
	case <-time.After(time.Until(deadline) + limits.Kill + 10*time.Second):
	}
	mu.Lock()
	defer mu.Unlock()
	return d
}

// scaleDown removes the instances and waits until Proxmox has none left,
// calling Update as Runner does meanwhile.
func scaleDown(s *session, sim *simulator, instances map[string]bool) (float64, error) {
	sim.clearFaults()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// Scaling to zero, Runner removes every instance it knows of, not only
	// the ready ones: add what Update reports (say, still creating).
	wanted := map[string]bool{}
	for id := range instances {
		wanted[id] = true
	}
	if states, err := s.states(ctx); err == nil {
		for id, state := range states {
			if state != provider.StateDeleting && state != provider.StateDeleted {
				wanted[id] = true
			}
		}
	}
	ids := make([]string, 0, len(wanted))
	for id := range wanted {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	started := time.Now()
	if len(ids) > 0 {
		if _, err := s.decrease(ctx, ids); err != nil {
			return 0, fmt.Errorf("Decrease: %w", err)
		}
	}
	for {
		left, err := sim.instances()
		if err != nil {
			return 0, err
		}
		if left == 0 {
			return sim.simSeconds(time.Since(started)), nil
		}
		if s.gone() {
			return 0, fmt.Errorf("%d VMs still in Proxmox after Decrease, then the %v", left, s.err())
		}
		if ctx.Err() != nil {
			return 0, fmt.Errorf("%d VMs still in Proxmox %.0f s (simulated) after Decrease: %s", left, sim.simSeconds(time.Since(started)), sim.leftovers())
		}
		s.states(ctx)
		time.Sleep(updateEvery)
	}
}

type apiCostResult struct {
	Contender string `json:"contender"`
	N         int    `json:"n"`
	Updates   int    `json:"updates"`
	// PVE requests per Update in steady state (everything the plugin sent
	// between the first and the last measured Update, divided by their count).
	RequestsPerUpdate float64          `json:"requests_per_update"`
	ByOperation       map[string]int64 `json:"by_operation"`
	// Plugin process CPU (user + system) per Update.
	CPUMillisPerUpdate float64 `json:"cpu_ms_per_update"`
	// Wall time of one Update through the host.
	UpdateMillis float64 `json:"update_ms"`
	RSSKB        int     `json:"rss_kb"`
	// Layout is the cluster's (multinode.go; empty: the usual one node),
	// PerNode the running instance VMs on each node at the measurement.
	Layout  string         `json:"layout,omitempty"`
	PerNode map[string]int `json:"instances_per_node,omitempty"`
	Error   string         `json:"error,omitempty"`
}

// apiCost grows one group to each size in turn and measures steady-state
// Updates at each, on the given cluster layout.
func apiCost(c *contender, simBinary, work string, sizes []int, scale float64, l layout) []apiCostResult {
	largest := sizes[len(sizes)-1]
	fail := func(err error) []apiCostResult {
		return []apiCostResult{{Contender: c.Name, N: sizes[0], Layout: l.Key, Error: err.Error()}}
	}
	// Fast timings: the steady state is what counts here, not the way there.
	fast := realisticTimings
	fast.CloneLinked, fast.Boot, fast.AgentDelay = 1, 2, 1
	sim, err := startSimulatorWith(simBinary, work, layoutScenario(fast, largest, l), scale, 11)
	if err != nil {
		return fail(err)
	}
	defer sim.stop()
	label := "API cost"
	if l.Key != "" {
		label += ", " + l.title()
	}
	s, err := openSession(c, sim, work, label, runParams{maxInstances: largest, cloneLimit: 16, layout: l})
	if err != nil {
		return fail(err)
	}
	defer s.close()
	if l.copies() && c.multiNode() {
		// The steady state on every node: growth starts once the plugin's
		// template copies are there (a plugin that makes them after Init
		// would otherwise put the first instances on the template's node).
		if err := sim.waitForCopies(len(l.nodes())-1, 5*time.Minute); err != nil {
			logf("  %s: %v; growing anyway", c.Name, err)
		}
	}
	var results []apiCostResult
	have := 0
	for _, n := range sizes {
		result := apiCostResult{Contender: c.Name, N: n, Layout: l.Key}
		if err := growTo(s, n, have); err != nil {
			result.Error = err.Error()
			results = append(results, result)
			break
		}
		have = n
		time.Sleep(2 * time.Second) // let background work (tags, renames) settle
		result.Updates = 50
		if n >= 1000 {
			result.Updates = 20
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(result.Updates)*limits.Update)
		sim.resetCounters()
		cpuBefore := cpuTicks(s.pid)
		started := time.Now()
		for i := 0; i < result.Updates; i++ {
			if _, err := s.states(ctx); err != nil {
				result.Error = "Update: " + err.Error()
				break
			}
			if c.scrapeURL != "" && i%metricsScrapeEvery == 0 {
				if err := scrape(ctx, c.scrapeURL); err != nil {
					result.Error = err.Error()
					break
				}
			}
		}
		elapsed := time.Since(started)
		cancel()
		cpu := cpuTicks(s.pid) - cpuBefore
		counters, err := sim.counters()
		if err != nil {
			result.Error = err.Error()
		}
		result.RequestsPerUpdate = float64(counters.RequestsTotal) / float64(result.Updates)
		result.ByOperation = counters.ByOperation
		result.CPUMillisPerUpdate = float64(cpu) * 1000 / clockTicks / float64(result.Updates)
		result.UpdateMillis = float64(elapsed.Microseconds()) / 1000 / float64(result.Updates)
		result.RSSKB = rssKB(s.pid)
		if l.Key != "" {
			if view, err := sim.clusterView(nil); err == nil {
				result.PerNode = view.RunningPerNode
			}
		}
		results = append(results, result)
	}
	return results
}

// metricsScrapeEvery is how many Updates pass between two scrapes: Runner
// calls Update about every second, Prometheus scrapes every 15 s by default,
// so 10 is a generous cadence.
const metricsScrapeEvery = 10

// scrape reads the exposition once, as Prometheus would.
func scrape(ctx context.Context, url string) error {
	request, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	response, err := http.DefaultClient.Do(request)
	if err != nil {
		return fmt.Errorf("could not scrape %s: %w", url, err)
	}
	defer response.Body.Close()
	if _, err := io.Copy(io.Discard, response.Body); err != nil {
		return fmt.Errorf("could not scrape %s: %w", url, err)
	}
	if response.StatusCode != http.StatusOK {
		return fmt.Errorf("could not scrape %s: %s", url, response.Status)
	}
	return nil
}

// growTo asks for more instances until n run, as Runner's provisioner does:
// Update and Increase take turns (never at once), Increase has no deadline
// of its own but the growth's budget, and what it asks for is capped by
// what Update already reports, so a plugin whose Increase made instances but
// answered with an error (the count is then lost on the wire) is not asked
// for all of them again.
func growTo(s *session, n, have int) error {
	budget := growthBudget(n - have)
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	defer cancel()
	deadline, _ := ctx.Deadline()
	asked, known, running := have, have, 0
	var lastErr error
	for {
		if need := min(n-asked, n-known); need > 0 {
			got, _ := s.increaseWithin(ctx, need, time.Until(deadline)+time.Second)
			asked += got
		}
		states, err := s.states(ctx)
		if err != nil {
			lastErr = err // the last good count stands
		} else {
			known, running = 0, 0
			for _, state := range states {
				switch state {
				case provider.StateDeleting, provider.StateDeleted:
				case provider.StateRunning:
					known++
					running++
				default:
					known++
				}
			}
			if running >= n {
				return nil
			}
		}
		if s.gone() {
			return fmt.Errorf("%d of %d instances running, then the %v", running, n, s.err())
		}
		if ctx.Err() != nil {
			return fmt.Errorf("only %d of %d instances running after %v (last Update error: %v)", running, n, budget.Round(time.Minute), lastErr)
		}
		time.Sleep(time.Second)
	}
}

// growthBudget is how long growTo waits for `more` instances: 15 minutes,
// and half a second more for each instance (one step of 2,000 gets 32
// minutes, where section 1's four steps to 2,000 get 15 minutes each).
func growthBudget(more int) time.Duration {
	return 15*time.Minute + time.Duration(max(more, 0))*time.Second/2
}

type footprint struct {
	Contender       string  `json:"contender"`
	HandshakeMillis float64 `json:"handshake_ms"` // median of the runs
	HandshakeRuns   int     `json:"handshake_runs"`
	// HandshakeKilled counts the runs in which the plugin did not exit
	// within 2 s of the controller's Shutdown and got SIGKILL.
	HandshakeKilled int `json:"handshake_killed"`
	IdleRSSKB       int `json:"idle_rss_kb"`
	// The anonymous part of IdleRSSKB (heap, stacks); the rest is the
	// binary's own file pages, shared with the page cache and reclaimable.
	IdleAnonKB  int    `json:"idle_anon_kb"`
	RSS1000KB   int    `json:"rss_1000_kb"`
	BinaryBytes int64  `json:"binary_bytes"`
	Error       string `json:"error,omitempty"`
}

// idleRSS starts the plugin against the simulator, runs Init and one
// Update, waits a moment and reads its resident set and the anonymous part
// of it.
func idleRSS(c *contender, simBinary, work string) (rss, anon int, err error) {
	sim, err := startSimulator(simBinary, work, realisticTimings, 1, 1, 3)
	if err != nil {
		return 0, 0, err
	}
	defer sim.stop()
	s, err := openSession(c, sim, work, "idle RSS", runParams{maxInstances: 10, cloneLimit: 4})
	if err != nil {
		return 0, 0, err
	}
	defer s.close()
	if _, err := s.states(context.Background()); err != nil && s.gone() {
		return 0, 0, err
	}
	time.Sleep(2 * time.Second)
	if kb := rssKB(s.pid); kb > 0 {
		return kb, statusKB(s.pid, "RssAnon:"), nil
	}
	return 0, 0, errors.New("could not find the plugin process")
}

// clockTicks is USER_HZ, 100 on every Linux architecture Go runs on.
const clockTicks = 100

// childPID finds this process's child that runs binary.
func childPID(binary string) int {
	if resolved, err := filepath.EvalSymlinks(binary); err == nil {
		binary = resolved
	}
	binary, _ = filepath.Abs(binary)
	entries, _ := os.ReadDir("/proc")
	best := 0
	for _, entry := range entries {
		pid, err := strconv.Atoi(entry.Name())
		if err != nil {
			continue
		}
		status, err := os.ReadFile("/proc/" + entry.Name() + "/status")
		if err != nil || !strings.Contains(string(status), "\nPPid:\t"+strconv.Itoa(os.Getpid())+"\n") {
			continue
		}
		if exe, _ := os.Readlink("/proc/" + entry.Name() + "/exe"); exe == binary && pid > best {
			best = pid // the newest child, if an earlier one is still exiting
		}
	}
	return best
}

func rssKB(pid int) int {
	return statusKB(pid, "VmRSS:")
}

// statusKB reads one "Name: N kB" line of /proc/PID/status.
func statusKB(pid int, name string) int {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(status), "\n") {
		if strings.HasPrefix(line, name) {
			kb, _ := strconv.Atoi(strings.Fields(line)[1])
			return kb
		}
	}
	return 0
}

// cpuTicks is utime + stime of a process.
func cpuTicks(pid int) int64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the parenthesised command name; utime and stime are 14 and 15.
	text := string(raw)
	fields := strings.Fields(text[strings.LastIndexByte(text, ')')+2:])
	utime, _ := strconv.ParseInt(fields[11], 10, 64)
	stime, _ := strconv.ParseInt(fields[12], 10, 64)
	return utime + stime
}
