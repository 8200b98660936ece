package main

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// The usual layout changes nothing: every other measurement's scenario
// stays what it was, without the migration timings.
func TestUsualLayoutIsTheUsualScenario(t *testing.T) {
	for _, capacity := range []int{64, 2000} {
		if got, want := layoutScenario(realisticTimings, capacity, layoutUsual), scenario(realisticTimings, capacity); !reflect.DeepEqual(got, want) {
			t.Errorf("capacity %d: the usual layout differs from scenario():\n%v\n%v", capacity, got, want)
		}
	}
	if timings := scenario(realisticTimings, 64)["timings"].(map[string]any); timings["migrate"] != nil || timings["template"] != nil {
		t.Errorf("the usual scenario sets migrate or template timings: %v", timings)
	}
	fault := faultScenario(realisticTimings, layoutUsual)
	if nodes := fault["nodes"].([]map[string]any); len(nodes) != 2 || nodes[0]["name"] != "pve1" {
		t.Errorf("the usual fault scenario's nodes: %v", nodes)
	}
}

func TestLocalLayoutScenario(t *testing.T) {
	s := roundTrip(t, faultScenario(realisticTimings, layoutLocal3))
	var names, subnets []string
	for _, node := range s.Nodes {
		names, subnets = append(names, node.Name), append(subnets, node.Subnet)
	}
	if strings.Join(names, ",") != "pve1,pve2,pve3" || strings.Join(subnets, ",") != "10.10.10.0/24,10.10.20.0/24,10.10.30.0/24" {
		t.Errorf("nodes %v, subnets %v", names, subnets)
	}
	if s.Timings["migrate"] != copyMigrateSeconds || s.Timings["template"] != copyTemplateSeconds || s.Timings["clone_full"] != realisticTimings.CloneFull {
		t.Errorf("timings: %v", s.Timings)
	}
	// local-lvm on every node (no node list), not shared: each has its own.
	for _, storage := range s.Storages {
		if storage.ID == "local-lvm" && (storage.Type != "lvmthin" || storage.Shared || len(storage.Nodes) != 0) {
			t.Errorf("local-lvm: %+v", storage)
		}
		if storage.ID == sharedStorage {
			t.Errorf("a local layout has the shared storage: %+v", storage)
		}
	}
	template := s.VMs[0]
	if template.VMID != templateID || template.Node != "pve1" || !template.Template ||
		template.Config["scsi0"] != "local-lvm:base-9000-disk-0,iothread=1,size=8G" || template.Config["ide2"] != "local-lvm:vm-9000-cloudinit,media=cdrom" {
		t.Errorf("template: %+v", template)
	}
	// The foreign VMs of the fault comparison are still there.
	var vmids []int
	for _, vm := range s.VMs {
		vmids = append(vmids, vm.VMID)
	}
	if !reflect.DeepEqual(vmids, []int{templateID, foreignInPool, foreignOutside}) {
		t.Errorf("VMs %v", vmids)
	}
	if len(s.Pools) != 1 || !reflect.DeepEqual(s.Pools[0].Storages, []string{"local-lvm"}) {
		t.Errorf("pools %+v", s.Pools)
	}
	// The scenario function left the usual template alone.
	if scenario(realisticTimings, 64)["vms"].([]map[string]any)[0]["config"].(map[string]string)["scsi0"] != "local-lvm:base-9000-disk-0,iothread=1,size=8G" {
		t.Error("layoutScenario changed the usual template's config")
	}

	five := roundTrip(t, layoutScenario(realisticTimings, 2000, layoutLocal5))
	seen := map[string]bool{}
	for i, node := range five.Nodes {
		if node.Name != layoutLocal5.Nodes[i] || !strings.HasSuffix(node.Subnet, ".0.0/16") || seen[node.Subnet] {
			t.Errorf("node %d: %+v (2,000 instances need a /16 on every node, each its own)", i, node)
		}
		seen[node.Subnet] = true
	}
}

func TestSharedLayoutScenario(t *testing.T) {
	s := roundTrip(t, layoutScenario(realisticTimings, 30, layoutShared1))
	if len(s.Nodes) != 1 || s.Nodes[0].Name != "pve1" {
		t.Errorf("nodes %+v", s.Nodes)
	}
	if _, ok := s.Timings["migrate"]; ok {
		t.Errorf("no copies on shared storage, yet migrate is set: %v", s.Timings)
	}
	var shared *storageJSON
	for i := range s.Storages {
		if s.Storages[i].ID == sharedStorage {
			shared = &s.Storages[i]
		}
	}
	if shared == nil || shared.Type != "rbd" || !shared.Shared || !strings.Contains(shared.Content, "images") {
		t.Fatalf("shared storage: %+v", shared)
	}
	// Disk and cloud-init drive on it: PVE clones onto another node only
	// when every volume of the source is on shared storage.
	if c := s.VMs[0].Config; c["scsi0"] != "ceph-vm:base-9000-disk-0,iothread=1,size=8G" || c["ide2"] != "ceph-vm:vm-9000-cloudinit,media=cdrom" {
		t.Errorf("template config: %v", c)
	}
	if !reflect.DeepEqual(s.Pools[0].Storages, []string{sharedStorage}) {
		t.Errorf("pool storages %v", s.Pools[0].Storages)
	}
	found := false
	for _, acl := range s.ACL {
		found = found || acl.Path == "/storage/"+sharedStorage && reflect.DeepEqual(acl.Roles, []string{"PVEDatastoreUser"}) && reflect.DeepEqual(acl.Tokens, []string{tokenID})
	}
	if !found {
		t.Errorf("no PVEDatastoreUser on /storage/%s: %+v", sharedStorage, s.ACL)
	}
}

// What each contender is given on each layout.
func TestConfigPerContenderAndLayout(t *testing.T) {
	sim := &simulator{URL: "https://127.0.0.1:1", Fingerprint: "AA:BB", CAFile: "/tmp/ca.pem"}
	work := t.TempDir()
	config := func(configure func(*simulator, string, runParams) ([]byte, error), l layout) map[string]any {
		t.Helper()
		raw, err := configure(sim, work, runParams{maxInstances: 30, cloneLimit: 4, layout: l})
		if err != nil {
			t.Fatal(err)
		}
		var out map[string]any
		if err := json.Unmarshal(raw, &out); err != nil {
			t.Fatal(err)
		}
		return out
	}
	list := func(items ...string) []any {
		out := make([]any, len(items))
		for i, item := range items {
			out[i] = item
		}
		return out
	}

	if got := config(configureOurs, layoutUsual); got["target_nodes"] != nil {
		t.Errorf("ours, usual layout: target_nodes %v", got["target_nodes"])
	}
	if got := config(configureOurs, layoutShared1); got["target_nodes"] != nil {
		t.Errorf("ours, one node on shared storage: target_nodes %v", got["target_nodes"])
	}
	if got := config(configureOurs, layoutLocal3)["target_nodes"]; !reflect.DeepEqual(got, list("pve1", "pve2", "pve3")) {
		t.Errorf("ours, three nodes: target_nodes %v", got)
	}
	if got := config(configureOurs, layoutLocal5)["target_nodes"]; !reflect.DeepEqual(got, list("pve1", "pve2", "pve3", "pve4", "pve5")) {
		t.Errorf("ours, five nodes: target_nodes %v", got)
	}

	usual := config(configureNE0sIghT, layoutUsual)
	if !reflect.DeepEqual(usual["nodes"], list("pve1")) || usual["template_stage_mode"] != "off" || usual["template_vmid_range"] != nil ||
		!reflect.DeepEqual(usual["target_storages"], list("local-lvm")) {
		t.Errorf("nE0sIghT, usual layout: %v", usual)
	}
	three := config(configureNE0sIghT, layoutLocal3)
	if !reflect.DeepEqual(three["nodes"], list("pve1", "pve2", "pve3")) || three["template_stage_mode"] != "auto" ||
		three["template_vmid_range"] != ne0sightTemplateRange || !reflect.DeepEqual(three["target_storages"], list("local-lvm")) {
		t.Errorf("nE0sIghT, three nodes: %v", three)
	}
	// Its README: template_vmid_range must not overlap vmid_range; nor may
	// it hold the template or the foreign VMs.
	low, high := vmidRange(t, three["template_vmid_range"].(string))
	vlow, vhigh := vmidRange(t, three["vmid_range"].(string))
	if low <= vhigh && vlow <= high {
		t.Errorf("template_vmid_range %s overlaps vmid_range %s", three["template_vmid_range"], three["vmid_range"])
	}
	for _, vmid := range []int{templateID, foreignInPool, foreignOutside} {
		if vmid >= low && vmid <= high {
			t.Errorf("template_vmid_range %s holds VM %d", three["template_vmid_range"], vmid)
		}
	}
	if shared := config(configureNE0sIghT, layoutShared1); !reflect.DeepEqual(shared["target_storages"], list(sharedStorage)) ||
		!reflect.DeepEqual(shared["nodes"], list("pve1")) || shared["template_stage_mode"] != "off" {
		t.Errorf("nE0sIghT, one node on shared storage: %v", shared)
	}

	// The LukasK32 lineage has no node setting: the same config everywhere.
	seed := config(configureLukasK32, layoutLocal3)
	for key := range seed {
		if strings.Contains(key, "node") {
			t.Errorf("LukasK32 lineage given %s", key)
		}
	}
	raw, _ := configureLukasK32(sim, work, runParams{maxInstances: 30, fullClone: true, layout: layoutShared1})
	if !strings.Contains(string(raw), `"storage":"`+sharedStorage+`"`) {
		t.Errorf("LukasK32 full clones on the shared layout: %s", raw)
	}

	ours, seedC, ne := &contender{Style: styleOurs}, &contender{Style: styleLukasK32}, &contender{Style: styleNE0sIghT}
	if !ours.multiNode() || !ne.multiNode() || seedC.multiNode() {
		t.Error("multiNode: ours and nE0sIghT take several nodes, the LukasK32 lineage does not")
	}
	if got := nodesGiven(seedC, layoutLocal3); !strings.HasPrefix(got, "pve1 only") {
		t.Errorf("nodesGiven(seed) = %q", got)
	}
	if got := (runParams{layout: layoutLocal3}).label(); got != "linked clones, three nodes, local-lvm on each (template on pve1's)" {
		t.Errorf("label = %q", got)
	}
	if got := (runParams{}).label(); got != "linked clones" {
		t.Errorf("the usual label changed: %q", got)
	}
}

// A contender without a node setting is not run on three nodes, and says why.
func TestTimeToRunningNotRunWithoutNodes(t *testing.T) {
	c := &contender{Name: "seed (LukasK32)", Style: styleLukasK32}
	got := timeToRunning(c, "/nonexistent", filepath.Join(t.TempDir(), "w"), layoutLocal3, 30, 4, 2)
	if got.NotRun == "" || got.Error != "" || got.Layout != "local3" {
		t.Errorf("%+v", got)
	}
}

func TestNewScenarioNames(t *testing.T) {
	got, err := parseScenarios("faults-multinode,time-to-running,api-multinode")
	if err != nil || !got["faults-multinode"] || !got["time-to-running"] || !got["api-multinode"] || got["faults"] || got["api"] {
		t.Fatalf("parseScenarios = %v, %v", got, err)
	}
	p := plan{scenarios: got}
	if !p.runs("time-to-running") || p.runs("scale") {
		t.Error("runs")
	}
}

// The report from fixture results: the section on several nodes, the
// side-by-side rows and the losses.
func TestRenderMultinode(t *testing.T) {
	ours := &contender{Key: "ours", Name: "ours (Rust)", Binary: "/bin/true", Style: styleOurs}
	ne := &contender{Key: "ne0sight", Name: "nE0sIghT", Binary: "/bin/true", Style: styleNE0sIghT}
	seed := &contender{Key: "seed", Name: "seed (LukasK32)", Binary: "/bin/true", Style: styleLukasK32}
	r := &report{Contenders: []*contender{ours, ne, seed}, Timings: realisticTimings, CloneLimit: 4,
		FaultsNodes: []faultResult{
			{Contender: ours.Name, Layout: "local3", Requested: 20, Accepted: 20, Ran: 18, PeakRunning: 8, Restarts: 2,
				RanPerNode: map[string]int{"pve1": 8, "pve2": 5, "pve3": 5}, TemplateCopies: []string{"100 on pve2 (bench-template-pve2)", "101 on pve3 (bench-template-pve3)"}},
			{Contender: ne.Name, Layout: "local3", Requested: 20, Accepted: 10, Ran: 7, PeakRunning: 5, Restarts: 2, LeakedVMs: []string{"1003 (stopped, bench-3)"},
				RanPerNode: map[string]int{"pve1": 3, "pve2": 2, "pve3": 2}},
			{Contender: seed.Name, Layout: "local3", Requested: 20, Accepted: 20, Ran: 15, PeakRunning: 8, Restarts: 2, RanPerNode: map[string]int{"pve1": 15}},
		},
		ToRunning: []toRunningResult{
			{Contender: ours.Name, Layout: "local3", N: 30, TimeScale: 2, Init: 0.4, Accepted: 1.2, FirstIncrease: 30, Running: 60, PerNode: map[string]int{"pve1": 20, "pve2": 5, "pve3": 5}, Copies: []string{"a", "b"}, Requests: 400},
			{Contender: ours.Name, Layout: "shared1", N: 30, TimeScale: 2, Init: 0.3, Accepted: 1.0, FirstIncrease: 30, Running: 40, PerNode: map[string]int{"pve1": 30}, Requests: 300},
			{Contender: ne.Name, Layout: "local3", N: 30, TimeScale: 2, Init: 120, Accepted: 121, FirstIncrease: 30, Running: 50, PerNode: map[string]int{"pve1": 10, "pve2": 10, "pve3": 10}, Copies: []string{"9900", "9901"}},
			{Contender: ne.Name, Layout: "shared1", N: 30, TimeScale: 2, Init: 1, Error: "12 of 30 running with an address after 400 s (simulated)"},
			{Contender: seed.Name, Layout: "local3", N: 30, NotRun: "not run: no node setting (clones go to the template's node only)"},
			{Contender: seed.Name, Layout: "shared1", N: 30, TimeScale: 2, Init: 0.1, Accepted: 0.5, FirstIncrease: 30, Running: 80, PerNode: map[string]int{"pve1": 30}},
		},
		APICostNodes: []apiCostResult{
			{Contender: ours.Name, Layout: "local5", N: 2000, Updates: 20, RequestsPerUpdate: 1, CPUMillisPerUpdate: 6, RSSKB: 20000,
				PerNode: map[string]int{"pve1": 400, "pve2": 400, "pve3": 400, "pve4": 400, "pve5": 400}, ByOperation: map[string]int64{"get_cluster_resources": 20}},
			{Contender: ne.Name, Layout: "local5", N: 2000, Updates: 20, RequestsPerUpdate: 2, CPUMillisPerUpdate: 3, RSSKB: 30000},
			{Contender: seed.Name, Layout: "local5", N: 2000, Error: "only 900 of 2000 instances running after 15 minutes"},
		},
	}
	text := renderMarkdown(r, "chart.svg")
	for _, want := range []string{
		"## 7. Several nodes",
		"### 7.1 Fault comparison on three nodes",
		"| ours (Rust) | pve1, pve2, pve3 (`target_nodes`) | 20 / 20 | 18 | 8 | 2 | 0 | 0 | 0 | none | 0 | 0 | pve1 8, pve2 5, pve3 5 | 2: 100 on pve2 (bench-template-pve2), 101 on pve3 (bench-template-pve3) |",
		"| seed (LukasK32) | pve1 only: no node setting, clones go to the template's node | 20 / 20 |",
		"| nE0sIghT | pve1, pve2, pve3 (`nodes`, `template_stage_mode = \"auto\"`) | 10 / 20 | 7 | 5 | 2 | 0 | 1: 1003 (stopped, bench-3) |",
		"### 7.2 Time to 30 running: three nodes with local storage, one node with shared storage",
		"| ours (Rust) | three nodes, local-lvm on each (template on pve1's) | pve1, pve2, pve3 (`target_nodes`) | 0.4 | 1.2 | 30 of 30 | 60.0 | pve1 20, pve2 5, pve3 5 | 2 | 400 |",
		"| nE0sIghT | one node, shared storage (template on ceph-vm, Ceph RBD) | pve1 | 1.0 | never | 0 of 30 | failed: 12 of 30 running",
		"| seed (LukasK32) | three nodes, local-lvm on each (template on pve1's) | pve1 only: no node setting, clones go to the template's node | not run: no node setting",
		"- ours (Rust): three nodes with local storage ÷ one node with shared storage = 1.50 (60.0 s vs 40.0 s to 30 running).",
		"### 7.3 API cost per Update over five nodes",
		"| ours (Rust) | pve1, pve2, pve3, pve4, pve5 (`target_nodes`) | 2000 | 20 | 1.00 | `get_cluster_resources` 1.00 | 6.00 | 0.0 | 19.5 MiB | pve1 400, pve2 400, pve3 400, pve4 400, pve5 400 |",
		"| seed (LukasK32) | pve1 only: no node setting, clones go to the template's node | 2000 | — | failed: only 900 of 2000",
		// Side by side.
		"| PVE requests/Update, N = 2000, five nodes | 0.50 | theirs failed: only 900 of 2000 instances running after 15 minutes |",
		"| plugin CPU/Update, N = 2000, five nodes | 2.00 |",
		"| time to 30 running from the start, three nodes, local-lvm on each (template on pve1's) | 1.20 | not run: no node setting (clones go to the template's node only) |",
		"| time to 30 running from the start, one node, shared storage (template on ceph-vm, Ceph RBD) | theirs failed: 12 of 30 running with an address after 400 s (simulated) | 0.50 |",
		"| time until all 30 accepted from the start, three nodes, local-lvm on each (template on pve1's) | 0.01 |",
		"| fault run on three nodes: VMs leaked | 0.00 | both 0 |",
		// Where we lose.
		"- **plugin CPU/Update, N = 2000, five nodes** against nE0sIghT: ours ÷ theirs = 2.00.",
		"- **time to 30 running from the start, three nodes, local-lvm on each (template on pve1's)** against nE0sIghT: ours ÷ theirs = 1.20. Time to running on a layout",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("the report lacks %q", want)
		}
	}
	if t.Failed() {
		t.Log(text)
	}
	// A competitor with one node only is marked where a ratio compares it.
	rows := sideBySide(r)
	for _, row := range rows {
		if row.measure == "fault run on three nodes: orphaned disks" && row.cells[1] != "both 0" {
			t.Errorf("orphaned disks vs seed: %q", row.cells[1])
		}
	}
	r.APICostNodes[2] = apiCostResult{Contender: seed.Name, Layout: "local5", N: 2000, Updates: 20, RequestsPerUpdate: 4, CPUMillisPerUpdate: 2, RSSKB: 10000}
	for _, row := range sideBySide(r) {
		if row.measure == "PVE requests/Update, N = 2000, five nodes" && row.cells[1] != "0.25 (theirs on pve1 only)" {
			t.Errorf("requests vs seed on one node: %q", row.cells[1])
		}
	}
	// The JSON of a run renders the same (-from-json).
	raw, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var again report
	if err := json.Unmarshal(raw, &again); err != nil {
		t.Fatal(err)
	}
	if renderMarkdown(&again, "chart.svg") != renderMarkdown(r, "chart.svg") {
		t.Error("the report rendered from its JSON differs")
	}
}

// The layouts' scenarios are ones the simulator takes (it refuses unknown
// fields and inconsistent volumes): each starts and lists its nodes.
func TestLayoutScenariosStartTheSimulator(t *testing.T) {
	binary := simBinary(t)
	for _, l := range []layout{layoutLocal3, layoutShared1, layoutLocal5} {
		t.Run(l.Key, func(t *testing.T) {
			sim, err := startSimulatorWith(binary, t.TempDir(), faultScenario(realisticTimings, l), 1, 1)
			if err != nil {
				t.Fatal(err)
			}
			defer sim.stop()
			var inv struct {
				Nodes []struct{ Name string } `json:"nodes"`
			}
			if err := sim.admin("GET", "inventory", nil, &inv); err != nil {
				t.Fatal(err)
			}
			if len(inv.Nodes) != len(l.Nodes) {
				t.Errorf("nodes %+v", inv.Nodes)
			}
			view, err := sim.clusterView(nil)
			if err != nil || len(view.Copies) != 0 || len(view.RunningPerNode) != 1 || view.RunningPerNode["pve1"] != 2 {
				t.Errorf("cluster view %+v, %v (want the two running foreign VMs on pve1)", view, err)
			}
		})
	}
}

type storageJSON struct {
	ID      string   `json:"id"`
	Type    string   `json:"type"`
	Shared  bool     `json:"shared"`
	Nodes   []string `json:"nodes"`
	Content string   `json:"content"`
}

type scenarioJSON struct {
	Timings map[string]float64 `json:"timings"`
	Nodes   []struct {
		Name   string `json:"name"`
		Subnet string `json:"subnet"`
	} `json:"nodes"`
	Storages []storageJSON `json:"storages"`
	Pools    []struct {
		ID       string   `json:"id"`
		Storages []string `json:"storages"`
	} `json:"pools"`
	VMs []struct {
		VMID     int               `json:"vmid"`
		Node     string            `json:"node"`
		Template bool              `json:"template"`
		Config   map[string]string `json:"config"`
	} `json:"vms"`
	ACL []struct {
		Path   string   `json:"path"`
		Roles  []string `json:"roles"`
		Tokens []string `json:"tokens"`
	} `json:"acl"`
}

// roundTrip reads a scenario as the simulator gets it (JSON).
func roundTrip(t *testing.T, s map[string]any) scenarioJSON {
	t.Helper()
	raw, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	var out scenarioJSON
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

func vmidRange(t *testing.T, text string) (int, int) {
	t.Helper()
	var low, high int
	if _, err := fmt.Sscanf(text, "%d-%d", &low, &high); err != nil {
		t.Fatalf("%q is not a range: %v", text, err)
	}
	return low, high
}

// A plugin that could not grow on one node is not grown again over five
// nodes; one that failed only at a larger size than the five-node step's
// still gets its five-node run.
func TestFiveNodesAreSkippedOnlyAfterAFailureAtNoLargerSize(t *testing.T) {
	stuck := []apiCostResult{
		{Contender: "slow", N: 10, RequestsPerUpdate: 1},
		{Contender: "slow", N: 100, Error: "grow: 0 of 100 after 16m"},
	}
	got, skipped := multinodeNotWorthRunning("slow", stuck, []int{2000}, layoutLocal5)
	if !skipped || len(got) != 1 {
		t.Fatalf("after a failure at N = 100 the five-node step at 2,000 ran (skipped %v, %v)", skipped, got)
	}
	if got[0].N != 2000 || got[0].Layout != "local5" || !strings.Contains(got[0].Error, "N = 100") || !strings.Contains(got[0].Error, "0 of 100 after 16m") {
		t.Errorf("the skip does not name the size and the reason: %+v", got[0])
	}

	for name, oneNode := range map[string][]apiCostResult{
		"all sizes passed":          {{N: 1000}, {N: 2000}},
		"failed above the step":     {{N: 1000}, {N: 4000, Error: "grow: timeout"}},
		"the one-node step not run": nil,
	} {
		if got, skipped := multinodeNotWorthRunning("ok", oneNode, []int{2000}, layoutLocal5); skipped || got != nil {
			t.Errorf("%s: the five-node step was skipped: %v", name, got)
		}
	}
}
