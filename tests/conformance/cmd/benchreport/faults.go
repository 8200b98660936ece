package main

import (
	"context"
	"fmt"
	"math/rand"
	"reflect"
	"sort"
	"strings"
	"syscall"
	"time"

	"gitlab.com/gitlab-org/fleeting/fleeting/provider"
)

// The fault comparison: every plugin under the same chaos, through the real
// fleeting host, with a Runner-like driver that keeps a desired capacity and
// finishes jobs, and two kill -9 restarts. What is counted comes from the
// simulator's inventory, not from the plugin.

const (
	faultCapacity = 8
	// faultChaos is how long (real) the faults stand before the drain.
	faultChaos = 90 * time.Second
	// faultDrain bounds the removal of everything once the faults are gone.
	faultDrain = 3 * time.Minute
	// faultRecovery is how long a restarted plugin has to list the
	// instances its predecessor had running.
	faultRecovery = 20 * time.Second
	// maxFaultCrashes bounds the restarts of a plugin that keeps crashing.
	maxFaultCrashes = 10
	// restartAttempts bounds the starts of one restart (Init may fail under the faults).
	restartAttempts = 5
	// Foreign VMs planted in the cluster: one in the plugins' pool, one
	// outside it. Nobody may touch them.
	foreignInPool  = 8101
	foreignOutside = 8102
)

// faultRules are the standing faults: the profile of issue 18 plus dead
// guest agents (the chaos soak's), applied to every plugin alike.
var faultRules = []map[string]any{
	{"operation": "*", "error_rate": 0.08, "status": 503},
	{"operation": "*", "drop_rate": 0.03},
	{"operation": "post_nodes_node_qemu_vmid_clone", "task_failure_rate": 0.15, "leave_orphans": true},
	{"operation": "post_nodes_node_qemu_vmid_status_start", "task_failure_rate": 0.10},
	{"operation": "delete_nodes_node_qemu_vmid", "task_failure_rate": 0.20},
	{"operation": "get_nodes_node_qemu_vmid_agent_network_get_interfaces", "error_rate": 0.20, "status": 500,
		"message": "QEMU guest agent is not running"},
}

type faultResult struct {
	Contender string  `json:"contender"`
	Seconds   float64 `json:"seconds"`
	Restarts  int     `json:"restarts"`
	// Instances the driver asked for, that the plugin accepted, and that ran
	// (Update said running and ConnectInfo gave an address).
	Requested int `json:"requested"`
	Accepted  int `json:"accepted"`
	Ran       int `json:"ran"`
	// PeakRunning is the most instances running at once (the target is
	// faultCapacity).
	PeakRunning int `json:"peak_running"`
	// NeverCameBack are instances running before a kill -9 that the
	// restarted plugin did not list within faultRecovery.
	NeverCameBack int `json:"never_came_back"`
	// What the simulator holds after the drain.
	LeakedVMs     []string `json:"leaked_vms"`
	OrphanedDisks int      `json:"orphaned_disks"`
	// Orphans describe the orphaned disks (volume, storage, node, size) as
	// the simulator lists them.
	Orphans        []string `json:"orphans,omitempty"`
	ForeignTouched []string `json:"foreign_touched"`
	// Crashes are the plugin's own exits, panics and hangs (not our kills).
	Crashes int `json:"crashes"`
	// Operations are the distinct PVE operations the plugin used in this
	// scenario, with their request counts.
	Operations map[string]int64 `json:"operations"`
	// Layout is the cluster's (multinode.go; empty: the usual one node).
	// On several nodes, RanPerNode counts the distinct instance VMs (VMID
	// and name) seen running on each node, and TemplateCopies are the
	// templates the plugin made and kept (not counted as leaks).
	Layout         string         `json:"layout,omitempty"`
	RanPerNode     map[string]int `json:"ran_per_node,omitempty"`
	TemplateCopies []string       `json:"template_copies,omitempty"`
	Error          string         `json:"error,omitempty"`
}

// faultScenario plants the foreign VMs next to the cluster of the layout.
func faultScenario(t timings, l layout) map[string]any {
	s := layoutScenario(t, 64, l)
	vms := s["vms"].([]map[string]any)
	vms = append(vms,
		map[string]any{"vmid": foreignInPool, "node": "pve1", "pool": poolName, "running": true,
			"config": map[string]string{"name": "build-cache", "description": "hand-made, not a runner", "tags": "prod",
				"memory": "1024", "scsi0": "local-lvm:vm-8101-disk-0,size=4G"}},
		map[string]any{"vmid": foreignOutside, "node": "pve1", "running": true,
			"config": map[string]string{"name": "fleeting-running", "description": "outside the pool",
				"memory": "1024", "scsi0": "local-lvm:vm-8102-disk-0,size=4G"}},
	)
	s["vms"] = vms
	return s
}

type vmView struct {
	Node     string
	Template bool
	Status   string
	Config   map[string]string
}

func (s *simulator) vmViews() (map[int]vmView, []string, error) {
	var inv inventory
	if err := s.admin("GET", "inventory", nil, &inv); err != nil {
		return nil, nil, err
	}
	views := map[int]vmView{}
	for _, vm := range inv.VMs {
		views[vm.VMID] = vmView{Node: vm.Node, Template: vm.Template, Status: vm.Status, Config: vm.Config}
	}
	var orphans []string
	for _, disk := range inv.OrphanedDisks {
		orphans = append(orphans, fmt.Sprint(disk))
	}
	return views, orphans, nil
}

// killNine ends the plugin with SIGKILL, as a crash or an OOM kill would;
// it is the harness's doing, so it is not recorded as an incident. The
// session is gone from then on: should the plugin not start again, the
// drain starts it once more instead of calling the dead one (which was
// recorded as the plugin's own exit, a crash).
func (s *session) killNine() {
	s.closed = true
	s.mu.Lock()
	if s.failure == nil {
		s.failure = fmt.Errorf("%w: killed with SIGKILL by the harness", errPluginGone)
	}
	s.mu.Unlock()
	if s.pid > 0 {
		syscall.Kill(s.pid, syscall.SIGKILL)
	}
	done := make(chan struct{})
	go func() { s.runner.Kill(); close(done) }()
	select {
	case <-done:
	case <-time.After(limits.Kill):
	}
	s.log.close()
}

func faultComparison(c *contender, simBinary, work string, scale float64, l layout) faultResult {
	label := "fault comparison"
	if l.Key != "" {
		label += ", " + l.title()
	}
	result := faultResult{Contender: c.Name, Layout: l.Key}
	fast := realisticTimings
	fast.CloneLinked, fast.Boot, fast.AgentDelay = 2, 4, 2
	sim, err := startSimulatorWith(simBinary, work, faultScenario(fast, l), scale, 23)
	if err != nil {
		result.Error = err.Error()
		return result
	}
	defer sim.stop()
	defer c.recordOperations(sim)
	before, _, err := sim.vmViews()
	if err != nil {
		result.Error = err.Error()
		return result
	}
	params := runParams{maxInstances: faultCapacity * 2, cloneLimit: 4, layout: l}
	// ranOn are the instance VMs seen running, by node (several nodes only).
	ranOn := map[string]map[string]bool{}
	incidentsBefore := len(c.Incidents)
	s, err := openSession(c, sim, work, label, params)
	if err != nil {
		result.Error = err.Error()
		return result
	}
	defer func() {
		if s != nil {
			s.close()
		}
	}()
	// restart starts the plugin again, as Runner does after a crash or a
	// kill; false when it cannot be started (then the run ends).
	restart := func(why string) bool {
		var err error
		// Runner keeps trying; a plugin whose Init fails under the faults
		// gets a few attempts, as the next Runner cycles would give it.
		for attempt := 0; attempt < restartAttempts; attempt++ {
			var next *session
			if next, err = openSession(c, sim, work, label, params); err == nil {
				s = next
				return true
			}
			time.Sleep(2 * time.Second)
		}
		result.Error = fmt.Sprintf("could not start the plugin again after %s (%d attempts): %v", why, restartAttempts, err)
		return false
	}
	for _, rule := range faultRules {
		if err := sim.admin("POST", "faults", rule, nil); err != nil {
			result.Error = err.Error()
			return result
		}
	}

	rng := rand.New(rand.NewSource(23))
	started := time.Now()
	kills := []time.Duration{faultChaos / 3, 2 * faultChaos / 3}
	outageAt, outageFor := faultChaos/2, 8*time.Second
	var outageRule *int
	addressed := map[string]bool{}
	removed := map[string]bool{}
	states := map[string]provider.State{}
	var lastErr error
	for time.Since(started) < faultChaos {
		elapsed := time.Since(started)
		if outageRule == nil && elapsed >= outageAt {
			var answer struct{ ID int }
			if err := sim.admin("POST", "faults", map[string]any{"operation": "*", "error_rate": 1.0, "status": 503}, &answer); err == nil {
				outageRule = &answer.ID
			}
		}
		if outageRule != nil && *outageRule >= 0 && elapsed >= outageAt+outageFor {
			sim.admin("DELETE", fmt.Sprintf("faults/%d", *outageRule), nil, nil)
			*outageRule = -1
		}
		if len(kills) > 0 && elapsed >= kills[0] {
			kills = kills[1:]
			running := map[string]bool{}
			for id, state := range states {
				if state == provider.StateRunning && !removed[id] {
					running[id] = true
				}
			}
			s.killNine()
			result.Restarts++
			if !restart("kill -9") {
				break
			}
			result.NeverCameBack += neverCameBack(s, running)
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), limits.Update+limits.Increase)
		current, err := s.states(ctx)
		cancel()
		if s.gone() {
			// Runner starts a crashed plugin again; so does the driver, a
			// bounded number of times.
			s.close()
			if result.Restarts+len(c.Incidents)-incidentsBefore > maxFaultCrashes+2 || !restart("a crash") {
				break
			}
			continue
		}
		if err != nil {
			lastErr = err
			time.Sleep(updateEvery)
			continue
		}
		states = current
		if l.multi() {
			if views, _, err := sim.vmViews(); err == nil {
				for vmid, view := range views {
					if _, existed := before[vmid]; !existed && !view.Template && view.Status == "running" {
						if ranOn[view.Node] == nil {
							ranOn[view.Node] = map[string]bool{}
						}
						ranOn[view.Node][fmt.Sprintf("%d %s", vmid, view.Config["name"])] = true
					}
				}
			}
		}
		alive, running := 0, 0
		var finished []string
		for id, state := range states {
			switch state {
			case provider.StateCreating:
				alive++
			case provider.StateRunning:
				alive++
				running++
				if !addressed[id] {
					ctx, cancel := context.WithTimeout(context.Background(), limits.ConnectInfo)
					if info, err := s.connectInfo(ctx, id); err == nil && (info.InternalAddr != "" || info.ExternalAddr != "") {
						addressed[id] = true
					}
					cancel()
				} else if !removed[id] && rng.Float64() < 0.08 {
					finished = append(finished, id) // a job ended: Runner removes the instance
				}
			case provider.StateTimeout:
				finished = append(finished, id)
			}
		}
		if running > result.PeakRunning {
			result.PeakRunning = running
		}
		if len(finished) > 0 {
			ctx, cancel := context.WithTimeout(context.Background(), limits.Decrease)
			gone, _ := s.decrease(ctx, finished)
			cancel()
			for _, id := range gone {
				removed[id] = true
			}
		}
		if need := faultCapacity - alive; need > 0 {
			ctx, cancel := context.WithTimeout(context.Background(), limits.Increase)
			got, err := s.increase(ctx, need)
			cancel()
			result.Requested += need
			result.Accepted += got
			if err != nil {
				lastErr = err
			}
		}
		time.Sleep(updateEvery)
	}
	result.Seconds = time.Since(started).Seconds()
	result.Ran = len(addressed)

	// The drain: faults gone, Runner removes everything, Update until empty
	// (a plugin that crashed is started again for it, as Runner would).
	sim.clearFaults()
	if s.gone() {
		s.close()
		restart("a crash, for the drain")
	}
	if !s.gone() {
		deadline := time.Now().Add(faultDrain)
		for time.Now().Before(deadline) && !s.gone() {
			ctx, cancel := context.WithTimeout(context.Background(), limits.Update)
			current, err := s.states(ctx)
			cancel()
			if err == nil && len(current) == 0 {
				// Listed nothing; give deletions in flight a moment to finish.
				if n, err := sim.instances(); err == nil && n <= 2 {
					break
				}
			}
			var ids []string
			for id, state := range current {
				if state != provider.StateDeleting && state != provider.StateDeleted {
					ids = append(ids, id)
				}
			}
			if len(ids) > 0 {
				ctx, cancel := context.WithTimeout(context.Background(), limits.Decrease)
				s.decrease(ctx, ids)
				cancel()
			}
			time.Sleep(time.Second)
		}
	}
	if counters, err := sim.counters(); err == nil {
		result.Operations = counters.ByOperation
	}
	after, orphans, err := sim.vmViews()
	if err != nil {
		result.Error = strings.TrimPrefix(result.Error+"; "+err.Error(), "; ")
		return result
	}
	for vmid, view := range after {
		if _, existed := before[vmid]; existed {
			continue
		}
		if l.multi() && view.Template {
			result.TemplateCopies = append(result.TemplateCopies, fmt.Sprintf("%d on %s (%s)", vmid, view.Node, view.Config["name"]))
			continue
		}
		result.LeakedVMs = append(result.LeakedVMs, fmt.Sprintf("%d (%s, %s)", vmid, view.Status, view.Config["name"]))
	}
	sort.Strings(result.LeakedVMs)
	sort.Strings(result.TemplateCopies)
	if l.multi() {
		result.RanPerNode = map[string]int{}
		for node, vms := range ranOn {
			result.RanPerNode[node] = len(vms)
		}
	}
	result.OrphanedDisks, result.Orphans = len(orphans), orphans
	for _, vmid := range []int{foreignInPool, foreignOutside, templateID} {
		was, now := before[vmid], after[vmid]
		if _, still := after[vmid]; !still {
			result.ForeignTouched = append(result.ForeignTouched, fmt.Sprintf("%d deleted", vmid))
		} else if was.Status != now.Status || !reflect.DeepEqual(withoutVolatile(was.Config), withoutVolatile(now.Config)) {
			result.ForeignTouched = append(result.ForeignTouched, fmt.Sprintf("%d changed", vmid))
		}
	}
	for _, i := range c.Incidents[incidentsBefore:] {
		if i.Scenario == label && i.Kind != "killed" {
			result.Crashes++
		}
	}
	if result.Error == "" && result.Ran == 0 && lastErr != nil {
		result.Error = "no instance ever ran; last error: " + lastErr.Error()
	}
	return result
}

// neverCameBack counts the instances of `running` that a restarted plugin
// does not list within faultRecovery.
func neverCameBack(s *session, running map[string]bool) int {
	deadline := time.Now().Add(faultRecovery)
	missing := len(running)
	for time.Now().Before(deadline) && !s.gone() {
		ctx, cancel := context.WithTimeout(context.Background(), limits.Update)
		states, err := s.states(ctx)
		cancel()
		if err == nil {
			missing = 0
			for id := range running {
				if _, listed := states[id]; !listed {
					missing++
				}
			}
			if missing == 0 {
				return 0
			}
		}
		time.Sleep(updateEvery)
	}
	return missing
}

// withoutVolatile drops what PVE itself changes on a VM nobody touched.
func withoutVolatile(config map[string]string) map[string]string {
	out := map[string]string{}
	for key, value := range config {
		if key != "digest" {
			out[key] = value
		}
	}
	return out
}

// renderFaults writes the fault comparison section.
func renderFaults(w func(string, ...any), r *report) {
	if len(r.Faults) == 0 {
		return
	}
	w("## 5. Fault comparison\n\n")
	w("Each plugin, through the real fleeting host, against the same simulated cluster and the same standing faults for %.0f s (real): ", faultChaos.Seconds())
	w("8%% of requests answered 503, 3%% of connections dropped, 15%% of clone tasks failing as after a node crash (their volumes stay), ")
	w("10%% of start tasks failing, 20%% of delete tasks failing, 20%% of guest-agent reads answered \"QEMU guest agent is not running\", ")
	w("and a %.0f s outage (every request 503) halfway. The driver keeps %d instances alive as Runner's taskscaler does (asks again for what is missing, ", 8.0, faultCapacity)
	w("removes an instance when its job ends, and removes `timeout` ones), and kills the plugin with SIGKILL at one and two thirds of the run, ")
	w("starting it again at once; a plugin that crashes on its own is started again too, as Runner does (at most %d times). ", maxFaultCrashes)
	w("Then the faults stop, every instance is removed, and the simulator's inventory is compared with the one before: ")
	w("a foreign VM sits in the pool and another named like a seed instance outside it; nobody may touch them or the template.\n\n")
	faultTable(w, r, r.Faults, layoutUsual)
}

// faultTable writes one row per plugin of a fault comparison; on several
// nodes with the nodes each was given, its instances per node and the
// template copies it kept.
func faultTable(w func(string, ...any), r *report, results []faultResult, l layout) {
	head := "| Plugin |"
	if l.multi() {
		head += " Nodes given |"
	}
	head += fmt.Sprintf(" Accepted / asked | Ran | Peak running (of %d) | kill -9 restarts | Running before a kill, not listed after (%.0f s) | VMs leaked | Orphaned disks | Foreign VMs touched | Crashes | PVE operations used |",
		faultCapacity, faultRecovery.Seconds())
	if l.multi() {
		head += " Ran, per node | Template copies kept |"
	}
	w("%s\n|%s\n", head, strings.Repeat("---|", strings.Count(head, "|")-1))
	for _, f := range results {
		leaked := "0"
		if len(f.LeakedVMs) > 0 {
			leaked = fmt.Sprintf("%d: %s", len(f.LeakedVMs), strings.Join(f.LeakedVMs, ", "))
		}
		touched := "none"
		if len(f.ForeignTouched) > 0 {
			touched = strings.Join(f.ForeignTouched, ", ")
		}
		row := "| " + f.Contender + " |"
		if l.multi() {
			row += " " + nodesGiven(contenderNamed(r, f.Contender), l) + " |"
		}
		row += fmt.Sprintf(" %d / %d | %d | %d | %d | %d | %s | %d | %s | %d | %d |", f.Accepted, f.Requested, f.Ran, f.PeakRunning,
			f.Restarts, f.NeverCameBack, leaked, f.OrphanedDisks, touched, f.Crashes, len(f.Operations))
		if l.multi() {
			copies := "none"
			if len(f.TemplateCopies) > 0 {
				copies = fmt.Sprintf("%d: %s", len(f.TemplateCopies), strings.Join(f.TemplateCopies, ", "))
			}
			row += fmt.Sprintf(" %s | %s |", perNodeText(f.RanPerNode), copies)
		}
		if f.Error != "" {
			row += " " + oneLine(f.Error)
		}
		w("%s\n", row)
	}
	w("\n")
}
