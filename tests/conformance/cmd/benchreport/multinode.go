package main

// Several nodes (issue 15): the cluster layouts beyond the usual one node,
// the scenario JSON for them, and the time-to-N-running measurement that
// compares three nodes with local storage (each node cloning from its own
// copy of the template) with one node on shared storage.

import (
	"context"
	"fmt"
	"math"
	"sort"
	"strings"
	"time"
)

// layout is a cluster's nodes and the storage that holds the template (its
// disk and cloud-init drive) and the instances' disks. The zero value is the
// usual cluster of every other measurement (scenario(): template on pve1's
// local-lvm, the plugins given pve1 only).
type layout struct {
	Key   string   `json:"key"`
	Nodes []string `json:"nodes,omitempty"`
	// Storage is the storage id; Shared: one storage seen by every node
	// (Ceph RBD here), else each node has its own (LVM-thin).
	Storage string `json:"storage,omitempty"`
	Shared  bool   `json:"shared,omitempty"`
}

var (
	layoutUsual   = layout{}
	layoutLocal3  = layout{Key: "local3", Nodes: []string{"pve1", "pve2", "pve3"}, Storage: "local-lvm"}
	layoutShared1 = layout{Key: "shared1", Nodes: []string{"pve1"}, Storage: sharedStorage, Shared: true}
	layoutLocal5  = layout{Key: "local5", Nodes: []string{"pve1", "pve2", "pve3", "pve4", "pve5"}, Storage: "local-lvm"}
	// toRunningLayouts are the layouts of the time-to-N-running scenario.
	toRunningLayouts = []layout{layoutLocal3, layoutShared1}
)

const (
	// sharedStorage is the shared storage of layoutShared1.
	sharedStorage = "ceph-vm"
	// The simulated seconds of an offline migration (the copy of an 8 GiB
	// local disk to another node) and of a conversion into a template, in
	// the layouts where a plugin copies the template to other nodes.
	copyMigrateSeconds  = 15
	copyTemplateSeconds = 1
	// ne0sightTemplateRange is nE0sIghT's template_vmid_range: apart from
	// its vmid_range (1000-8999) and from the template (9000).
	ne0sightTemplateRange = "9900-9999"
)

func (l layout) nodes() []string {
	if len(l.Nodes) == 0 {
		return []string{"pve1"}
	}
	return l.Nodes
}

func (l layout) storage() string {
	if l.Storage == "" {
		return "local-lvm"
	}
	return l.Storage
}

func (l layout) multi() bool { return len(l.Nodes) > 1 }

// copies reports whether a plugin given every node needs template copies:
// several nodes, each with its own storage.
func (l layout) copies() bool { return l.multi() && !l.Shared }

var numberWords = map[int]string{1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}

// title names the layout in the report.
func (l layout) title() string {
	if l.Key == "" {
		return "one node, template on pve1's local-lvm"
	}
	count := numberWords[len(l.Nodes)]
	if count == "" {
		count = fmt.Sprint(len(l.Nodes))
	}
	nodes := "nodes"
	if len(l.Nodes) == 1 {
		nodes = "node"
	}
	if l.Shared {
		return fmt.Sprintf("%s %s, shared storage (template on %s, Ceph RBD)", count, nodes, l.storage())
	}
	return fmt.Sprintf("%s %s, %s on each (template on pve1's)", count, nodes, l.storage())
}

func layoutByKey(key string) layout {
	for _, l := range []layout{layoutLocal3, layoutShared1, layoutLocal5} {
		if l.Key == key {
			return l
		}
	}
	return layoutUsual
}

// layoutScenario is scenario() on the given layout: its nodes (all alike,
// each with its own DHCP subnet), its storage holding the template's disk
// and cloud-init drive and being the pool's storage, the migration and
// template timings where copies are made. The usual layout gives scenario()
// unchanged.
func layoutScenario(t timings, capacity int, l layout) map[string]any {
	if l.Key == "" {
		return scenario(t, capacity)
	}
	if l.copies() {
		t.Migrate, t.Template = copyMigrateSeconds, copyTemplateSeconds
	}
	s := scenario(t, capacity)
	var nodes []map[string]any
	for i, name := range l.nodes() {
		// A plugin may put every instance on one node: each node has room
		// for all of them.
		subnet := fmt.Sprintf("10.10.%d.0/24", 10*(i+1))
		if capacity > 200 {
			subnet = fmt.Sprintf("10.%d.0.0/16", 64+i)
		}
		nodes = append(nodes, map[string]any{"name": name, "subnet": subnet, "subnet6": fmt.Sprintf("fd00:10:10:%d::/64", 10*(i+1)),
			"cpus": 512, "memory_gib": 16384})
	}
	s["nodes"] = nodes
	storage := l.storage()
	if l.Shared {
		s["storages"] = append(s["storages"].([]map[string]any),
			map[string]any{"id": storage, "type": "rbd", "shared": true, "content": "images,rootdir", "total_gib": 1 << 20})
		acl := s["acl"].([]map[string]any)
		s["acl"] = append(acl, map[string]any{"path": "/storage/" + storage, "roles": []string{"PVEDatastoreUser"},
			"users": []string{userName + "@" + userRealm}, "tokens": []string{tokenID}, "propagate": true})
	}
	s["pools"] = []map[string]any{{"id": poolName, "comment": "CI runners", "storages": []string{storage}}}
	vms := s["vms"].([]map[string]any)
	template := map[string]any{}
	for k, v := range vms[0] {
		template[k] = v
	}
	config := map[string]string{}
	for k, v := range vms[0]["config"].(map[string]string) {
		config[k] = v
	}
	// The cloud-init drive too: PVE clones onto another node only when
	// every volume of the source is on shared storage.
	config["scsi0"] = storage + ":base-9000-disk-0,iothread=1,size=8G"
	config["ide2"] = storage + ":vm-9000-cloudinit,media=cdrom"
	template["config"] = config
	s["vms"] = append([]map[string]any{template}, vms[1:]...)
	return s
}

// nodesGiven says which nodes a contender was given on a layout.
func nodesGiven(c *contender, l layout) string {
	nodes := strings.Join(l.nodes(), ", ")
	switch {
	case !l.multi():
		return nodes
	case c == nil:
		return "—"
	case c.Style == styleOurs:
		return nodes + " (`target_nodes`)"
	case c.Style == styleNE0sIghT:
		return nodes + " (`nodes`, `template_stage_mode = \"auto\"`)"
	default:
		return "pve1 only: no node setting, clones go to the template's node"
	}
}

// clusterView is what the simulator holds, by node.
type clusterView struct {
	// RunningPerNode counts the running VMs that are not templates.
	RunningPerNode map[string]int
	// Copies are the templates other than the source template, as
	// "VMID on NODE (NAME)".
	Copies []string
}

func (s *simulator) clusterView(exclude map[int]bool) (clusterView, error) {
	var inv inventory
	if err := s.admin("GET", "inventory", nil, &inv); err != nil {
		return clusterView{}, err
	}
	view := clusterView{RunningPerNode: map[string]int{}}
	for _, vm := range inv.VMs {
		switch {
		case exclude[vm.VMID] || vm.VMID == templateID:
		case vm.Template:
			view.Copies = append(view.Copies, fmt.Sprintf("%d on %s (%s)", vm.VMID, vm.Node, vm.Config["name"]))
		case vm.Status == "running":
			view.RunningPerNode[vm.Node]++
		}
	}
	sort.Strings(view.Copies)
	return view, nil
}

// waitForCopies waits until the simulator holds want template copies.
func (s *simulator) waitForCopies(want int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		view, err := s.clusterView(nil)
		if err == nil && len(view.Copies) >= want {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d template copies after %s (last: %v, %v)", len(view.Copies), want, timeout, view.Copies, err)
		}
		time.Sleep(updateEvery)
	}
}

// perNodeText writes "pve1 12, pve2 9, pve3 9".
func perNodeText(perNode map[string]int) string {
	if len(perNode) == 0 {
		return "—"
	}
	return countsText(perNode)
}

// countsText writes "name n, name n" sorted by name.
func countsText(counts map[string]int) string {
	names := make([]string, 0, len(counts))
	for name := range counts {
		names = append(names, name)
	}
	sort.Strings(names)
	parts := make([]string, 0, len(names))
	for _, name := range names {
		parts = append(parts, fmt.Sprintf("%s %d", name, counts[name]))
	}
	return strings.Join(parts, ", ")
}

// toRunningResult is one plugin on one layout: from the plugin's start to n
// instances running with an address.
type toRunningResult struct {
	Contender string  `json:"contender"`
	Layout    string  `json:"layout"`
	N         int     `json:"n"`
	TimeScale float64 `json:"time_scale"`
	// Simulated seconds from the plugin's start (exec, handshake, Init):
	// until Init returned; until the plugin had accepted all n (the driver
	// asks again for what it did not accept); until n instances ran with
	// an address.
	Init     float64 `json:"init_seconds"`
	Accepted float64 `json:"accepted_seconds"`
	Running  float64 `json:"running_seconds"`
	// FirstIncrease is what the first Increase(n) accepted.
	FirstIncrease int `json:"first_increase_accepted"`
	// Replaced counts instances given up on before they ran, asked for again.
	Replaced int `json:"replaced,omitempty"`
	// PerNode counts the running instance VMs on each node at the end;
	// Copies are the template copies the plugin made.
	PerNode  map[string]int `json:"instances_per_node,omitempty"`
	Copies   []string       `json:"template_copies,omitempty"`
	Requests int64          `json:"requests"`
	// NotRun says why the plugin was not measured on this layout.
	NotRun string `json:"not_run,omitempty"`
	Error  string `json:"error,omitempty"`
}

// timeToRunning starts the plugin on a fresh simulator with the given
// layout and drives it, as Runner does, from Init to n instances running
// with an address.
func timeToRunning(c *contender, simBinary, work string, l layout, n, cloneLimit int, scale float64) toRunningResult {
	result := toRunningResult{Contender: c.Name, Layout: l.Key, N: n, TimeScale: scale}
	if l.multi() && !c.multiNode() {
		result.NotRun = "not run: no node setting (clones go to the template's node only)"
		return result
	}
	label := fmt.Sprintf("time to %d running, %s", n, l.title())
	sim, err := startSimulatorWith(simBinary, work, layoutScenario(realisticTimings, n, l), scale, 13)
	if err != nil {
		result.Error = err.Error()
		return result
	}
	defer sim.stop()
	defer c.recordOperations(sim)
	t := realisticTimings
	copies := 0.0
	if l.copies() {
		copies = t.CloneFull + copyMigrateSeconds + copyTemplateSeconds
	}
	ideal := copies + math.Ceil(float64(n)/float64(cloneLimit))*t.CloneLinked + t.bootAndAgent()
	budget := time.Duration((ideal*6+120)/scale*float64(time.Second)) + limits.Init + 30*time.Second
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	defer cancel()

	started := time.Now()
	s, err := openSession(c, sim, work, label, runParams{maxInstances: n, cloneLimit: cloneLimit, layout: l})
	if err != nil {
		result.Error = err.Error()
		return result
	}
	defer s.close()
	result.Init = sim.simSeconds(time.Since(started))
	up := driveUp(ctx, s, sim, n, started)
	result.Error, result.Replaced, result.FirstIncrease = up.err, len(up.lost), up.firstAccepted
	if !up.allAccepted.IsZero() {
		result.Accepted = sim.simSeconds(up.allAccepted.Sub(started))
	}
	if result.Error == "" {
		result.Running = sim.simSeconds(time.Since(started))
	}
	if counters, err := sim.counters(); err == nil {
		result.Requests = counters.RequestsTotal
	}
	if view, err := sim.clusterView(nil); err == nil {
		result.PerNode, result.Copies = view.RunningPerNode, view.Copies
	}
	return result
}

// renderMultinode writes the section on several nodes.
func renderMultinode(w func(string, ...any), r *report) {
	if len(r.FaultsNodes) == 0 && len(r.ToRunning) == 0 && len(r.APICostNodes) == 0 {
		return
	}
	w("## 7. Several nodes\n\n")
	w("The clusters below have several nodes alike (512 CPUs, 16 TiB each, each with its own DHCP subnet). Where each node has its own ")
	w("local storage (LVM-thin `local-lvm`, not shared) and the template is on pve1's, PVE clones onto pve1 only, so a plugin given the other nodes ")
	w("makes a copy of the template on each (ours: a full clone, offline migration and conversion, in the background after Init; ")
	w("nE0sIghT: the same steps, during Init, one node after the other); a migration takes %d s and a conversion %d s (simulated). ", copyMigrateSeconds, copyTemplateSeconds)
	w("Each plugin is given every node it can be: ours with `target_nodes`; nE0sIghT with `nodes`, `template_stage_mode = \"auto\"` and ")
	w("`template_vmid_range = \"%s\"`; the LukasK32 lineage (seed, Phenix66) has no node setting, so it is given the cluster as it is and clones ", ne0sightTemplateRange)
	w("onto the template's node (pve1) only: its figures here are one node's. The settings are under *Settings given to each plugin*.\n\n")

	if len(r.FaultsNodes) > 0 {
		w("### 7.1 Fault comparison on three nodes\n\n")
		w("The fault comparison of section 5 (same faults, same driver, same kills and outage) on %s. ", layoutLocal3.title())
		w("The template copies a plugin keeps after the drain are listed apart (they are meant to stay); every other VM left is a leak. ")
		w("*Ran, per node* counts the distinct instance VMs (VMID and name) seen running on each node during the run.\n\n")
		faultTable(w, r, r.FaultsNodes, layoutLocal3)
	}

	if len(r.ToRunning) > 0 {
		n := r.ToRunning[0].N
		w("### 7.2 Time to %d running: three nodes with local storage, one node with shared storage\n\n", n)
		w("A fresh simulator per plugin and layout, realistic timings (linked clone %.0f s, full clone %.0f s, start + boot + agent %.0f s) at time scale %.0f, clone limit %d. ",
			r.Timings.CloneLinked, r.Timings.CloneFull, r.Timings.bootAndAgent(), r.ToRunning[0].TimeScale, r.CloneLimit)
		w("Times are simulated seconds from the plugin's start (exec, handshake, Init): until Init returned, until the plugin had accepted all %d instances ", n)
		w("(the driver asks again for what an Increase did not accept, as Runner does), and until %d ran with an address. ", n)
		w("A plugin that copies the template after Init accepts and clones on the template's node meanwhile; one that copies during Init accepts nothing before.\n\n")
		w("| Plugin | Layout | Nodes given | Init returned (s) | All %d accepted (s) | First Increase accepted | %d running (s) | Running, per node | Template copies | PVE requests |\n", n, n)
		w("|---|---|---|---|---|---|---|---|---|---|\n")
		for _, t := range r.ToRunning {
			l := layoutByKey(t.Layout)
			c := contenderNamed(r, t.Contender)
			prefix := fmt.Sprintf("| %s | %s | %s", t.Contender, l.title(), nodesGiven(c, l))
			switch {
			case t.NotRun != "":
				w("%s | %s | | | | | | |\n", prefix, oneLine(t.NotRun))
				continue
			case t.Error != "" && t.Init == 0:
				w("%s | failed: %s | | | | | | |\n", prefix, oneLine(t.Error))
				continue
			}
			accepted, running := "never", "—"
			if t.Accepted > 0 {
				accepted = fmt.Sprintf("%.1f", t.Accepted)
			}
			if t.Error != "" {
				running = "failed: " + oneLine(t.Error)
			} else {
				running = fmt.Sprintf("%.1f", t.Running)
				if t.Replaced > 0 {
					running += fmt.Sprintf(" (%d given up and asked for again)", t.Replaced)
				}
			}
			w("%s | %.1f | %s | %d of %d | %s | %s | %d | %d |\n", prefix, t.Init, accepted, t.FirstIncrease, t.N, running, perNodeText(t.PerNode), len(t.Copies), t.Requests)
		}
		w("\n")
		for _, c := range ranContenders(r) {
			local, okLocal := findToRunning(r, c.Name, layoutLocal3.Key)
			shared, okShared := findToRunning(r, c.Name, layoutShared1.Key)
			if okLocal && okShared && local.NotRun == "" && local.Error == "" && shared.Error == "" && shared.Running > 0 {
				w("- %s: three nodes with local storage ÷ one node with shared storage = %.2f (%.1f s vs %.1f s to %d running).\n",
					c.Name, local.Running/shared.Running, local.Running, shared.Running, local.N)
			}
		}
		w("\n")
	}

	if len(r.APICostNodes) > 0 {
		w("### 7.3 API cost per Update over five nodes\n\n")
		w("Section 1's measurement on %s: once the plugin's template copies are there (nE0sIghT makes them during Init; ours after it, so the driver waits for them), ", layoutLocal5.title())
		w("one group grows to each size in turn, the instances spread over the nodes by each plugin's own placement, then the host calls Update repeatedly. ")
		w("The LukasK32 lineage has every instance on pve1 (no node setting), so its figures are one node's.\n\n")
		w("| Plugin | Nodes given | N | Updates | PVE requests/Update | Requests by operation | CPU ms/Update | Update wall ms | RSS | Running, per node |\n")
		w("|---|---|---|---|---|---|---|---|---|---|\n")
		for _, a := range r.APICostNodes {
			given := nodesGiven(contenderNamed(r, a.Contender), layoutLocal5)
			if a.Error != "" {
				w("| %s | %s | %d | — | failed: %s | | | | | |\n", a.Contender, given, a.N, oneLine(a.Error))
				continue
			}
			w("| %s | %s | %d | %d | %.2f | %s | %.2f | %.1f | %s | %s |\n", a.Contender, given, a.N, a.Updates, a.RequestsPerUpdate,
				operations(a.ByOperation, a.Updates), a.CPUMillisPerUpdate, a.UpdateMillis, mib(a.RSSKB), perNodeText(a.PerNode))
		}
		w("\n")
	}
}

func contenderNamed(r *report, name string) *contender {
	for _, c := range r.Contenders {
		if c.Name == name {
			return c
		}
	}
	return nil
}

func findToRunning(r *report, name, layoutKey string) (toRunningResult, bool) {
	for _, t := range r.ToRunning {
		if t.Contender == name && t.Layout == layoutKey {
			return t, true
		}
	}
	return toRunningResult{}, false
}

func findAPICostIn(results []apiCostResult, name string, n int) *apiCostResult {
	for i := range results {
		if results[i].Contender == name && results[i].N == n {
			return &results[i]
		}
	}
	return nil
}

// multinodeRows are the side-by-side figures of the several-node runs.
// A competitor measured on one node only (no node setting) is marked.
func multinodeRows(r *report, row func(measure, kind string, mine float64, mineOK bool, theirs func(c *contender) (float64, string)) sideRow) []sideRow {
	us := r.Contenders[0]
	competitors := ranCompetitors(r)
	onePlace := func(out sideRow) sideRow {
		for i, c := range competitors {
			if !c.multiNode() && out.ratios[i] > 0 {
				out.cells[i] += " (theirs on pve1 only)"
			}
		}
		return out
	}
	var rows []sideRow
	for _, a := range r.APICostNodes {
		if a.Contender != us.Name {
			continue
		}
		ok := a.Error == ""
		find := func(c *contender) *apiCostResult { return findAPICostIn(r.APICostNodes, c.Name, a.N) }
		rows = append(rows,
			onePlace(row(fmt.Sprintf("PVE requests/Update, N = %d, five nodes", a.N), "requests", a.RequestsPerUpdate, ok, func(c *contender) (float64, string) {
				if t := find(c); t != nil {
					return t.RequestsPerUpdate, t.Error
				}
				return 0, ""
			})),
			onePlace(row(fmt.Sprintf("plugin CPU/Update, N = %d, five nodes", a.N), "cpu", a.CPUMillisPerUpdate, ok, func(c *contender) (float64, string) {
				if t := find(c); t != nil {
					return t.CPUMillisPerUpdate, t.Error
				}
				return 0, ""
			})),
			onePlace(row(fmt.Sprintf("RSS with N = %d, five nodes", a.N), "rss", float64(a.RSSKB), ok, func(c *contender) (float64, string) {
				if t := find(c); t != nil {
					return float64(t.RSSKB), t.Error
				}
				return 0, ""
			})))
	}
	for _, l := range toRunningLayouts {
		mine, found := findToRunning(r, us.Name, l.Key)
		if !found || mine.NotRun != "" {
			continue
		}
		theirs := func(value func(toRunningResult) float64) func(c *contender) (float64, string) {
			return func(c *contender) (float64, string) {
				t, found := findToRunning(r, c.Name, l.Key)
				switch {
				case !found:
					return 0, ""
				case t.NotRun != "":
					return 0, t.NotRun
				case value(t) <= 0 && t.Error != "":
					return 0, t.Error
				}
				return value(t), ""
			}
		}
		rows = append(rows,
			row(fmt.Sprintf("time to %d running from the start, %s", mine.N, l.title()), "to-running", mine.Running, mine.Error == "",
				theirs(func(t toRunningResult) float64 { return t.Running })),
			row(fmt.Sprintf("time until all %d accepted from the start, %s", mine.N, l.title()), "to-accepted", mine.Accepted, mine.Accepted > 0,
				theirs(func(t toRunningResult) float64 { return t.Accepted })))
	}
	for _, f := range r.FaultsNodes {
		if f.Contender != us.Name {
			continue
		}
		ok := f.Error == ""
		theirs := func(value func(faultResult) float64) func(c *contender) (float64, string) {
			return func(c *contender) (float64, string) {
				for _, t := range r.FaultsNodes {
					if t.Contender == c.Name {
						return value(t), ""
					}
				}
				return 0, ""
			}
		}
		rows = append(rows,
			onePlace(row("fault run on three nodes: VMs leaked", "leaks", float64(len(f.LeakedVMs)), ok, theirs(func(t faultResult) float64 { return float64(len(t.LeakedVMs)) }))),
			onePlace(row("fault run on three nodes: orphaned disks", "leaks", float64(f.OrphanedDisks), ok, theirs(func(t faultResult) float64 { return float64(t.OrphanedDisks) }))))
	}
	return rows
}
