package main

import (
	"strings"
	"testing"
)

func TestOperationsSayWhatRanCleanlyAndWhyPVERefusedTheRest(t *testing.T) {
	seed := &contender{Key: "seed", Name: "seed (LukasK32)", Operations: map[string]*operationUse{
		"get_pools_poolid": {Requests: 12, Answers: map[string]int64{"200": 11, "401": 1},
			Refusals: map[string]int64{"401 No ticket": 1}},
		"post_nodes_node_qemu_vmid_clone": {Requests: 3, Answers: map[string]int64{"200": 2}},
		"get_cluster_status": {Requests: 2, Answers: map[string]int64{"403": 2},
			Refusals: map[string]int64{"403 Permission check failed (/, Sys.Audit)": 2}},
		"get_nodes_node_storage": {Requests: 1, Answers: map[string]int64{"400": 1},
			Refusals: map[string]int64{"400 Parameter verification failed. (x: bad)": 1}},
	}}
	idle := &contender{Key: "ours", Name: "ours (Rust)"}
	text := rendered(func(w func(string, ...any)) { renderOperations(w, &report{Contenders: []*contender{idle, seed}}) })
	requireAll(t, "operations section", text,
		"| seed (LukasK32) | 4 | 1 | `get_cluster_status`, `get_nodes_node_storage`, `get_pools_poolid` |",
		"| `post_nodes_node_qemu_vmid_clone` | 3 | 200 × 2 | yes |  |",
		"1 × `401 No ticket`: go-proxmox logs in lazily",
		"2 × `403 Permission check failed (/, Sys.Audit)`: `GET /cluster/status` needs Sys.Audit on `/`",
		"1 × `400 Parameter verification failed. (x: bad)`: not explained: to check against PVE",
	)
	if strings.Contains(text, "ours (Rust)") {
		t.Errorf("a contender with no operations recorded has a row:\n%s", text)
	}
}
