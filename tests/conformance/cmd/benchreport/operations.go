package main

import (
	"fmt"
	"sort"
	"strings"
)

// The PVE operations each plugin used, from the simulator's counters: how
// many requests, how the simulator answered them apart from the injected
// faults, and why it refused the ones it refused. The simulator answers as
// PVE does (issue 14: a request it answers differently is a simulator bug),
// so a refusal is the plugin's: knownRefusals says why PVE refuses it too.

// operationUse is one PVE operation as one plugin used it, summed over the
// scenarios that count it (scale and faults).
type operationUse struct {
	Requests int64 `json:"requests"`
	// Answers are the simulator's own answers by HTTP status; injected
	// faults and dropped connections are not among them.
	Answers map[string]int64 `json:"answers,omitempty"`
	// Refusals counts the answers of 400 and more by reason ("<status>
	// <message>", VM ids as N).
	Refusals map[string]int64 `json:"refusals,omitempty"`
}

// clean reports whether every answer was a success (injected faults apart).
func (u *operationUse) clean() bool { return len(u.Refusals) == 0 }

// recordOperations adds what the simulator counted to the contender's
// operations; called once per simulator, before it stops.
func (c *contender) recordOperations(sim *simulator) {
	counters, err := sim.counters()
	if err != nil {
		logf("  could not read the simulator's counters for %s: %v", c.Name, err)
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.Operations == nil {
		c.Operations = map[string]*operationUse{}
	}
	for operation, requests := range counters.ByOperation {
		use := c.Operations[operation]
		if use == nil {
			use = &operationUse{}
			c.Operations[operation] = use
		}
		use.Requests += requests
		use.Answers = addCounts(use.Answers, counters.AnswersByOperation[operation])
		use.Refusals = addCounts(use.Refusals, counters.Refusals[operation])
	}
}

func addCounts(into, from map[string]int64) map[string]int64 {
	if len(from) == 0 {
		return into
	}
	if into == nil {
		into = map[string]int64{}
	}
	for key, n := range from {
		into[key] += n
	}
	return into
}

// knownRefusal says why PVE refuses a request a plugin makes, and what the
// plugin does about it.
type knownRefusal struct {
	// contender is the key (seed, phenix66, ne0sight, ours); "" matches any.
	contender, operation string
	// reason is the start of the simulator's reason ("<status> <message>").
	reason string
	// why is the explanation in the report.
	why string
}

// knownRefusals are the refusals checked against PVE's schema and
// behaviour (issue 14): each is what a real PVE answers too.
var knownRefusals = []knownRefusal{
	{operation: "*", reason: "401 No ticket",
		why: "go-proxmox logs in lazily: its first request carries no ticket, PVE answers 401 `No ticket` as the simulator does, and the client then asks for a ticket and retries"},
	{operation: "get_cluster_status", reason: "403 Permission check failed (/, Sys.Audit)",
		why: "`GET /cluster/status` needs Sys.Audit on `/` (the schema's permission check), which the README's roles (on the pool, storage, network and node) do not grant; go-proxmox's `Cluster()` ignores the refusal and the clone goes on with `/cluster/nextid`"},
	{operation: "*", reason: "500 QEMU guest agent is not running",
		why: "the guest agent is not up yet (the VM is booting); PVE answers 500 `QEMU guest agent is not running` until it is, and the plugin asks again"},
	{contender: "ours", operation: "get_cluster_nextid", reason: "400 Parameter verification failed. (vmid: VM N already exists)",
		why: "ours asks `/cluster/nextid?vmid=N` whether an id it chose is free; PVE answers 400 `VM N already exists` when it is not, and ours tries the next"},
	{contender: "lecyreaxyt", operation: "get_cluster_nextid", reason: "400 Parameter verification failed. (vmid: VM N already exists)",
		why: "LeCyreaxYT asks `/cluster/nextid?vmid=N` for every id from the bottom of its range upward on each clone; PVE answers 400 `VM N already exists` for a taken id, and it tries the next"},
	{contender: "ours", operation: "post_nodes_node_qemu_vmid_clone", reason: "500 unable to create VM N: config file already exists",
		why: "`/cluster/nextid` reported N free while a clone onto N was already under way (qemu-server writes the new VM's config only inside the clone task): in the fault run, one sent by the process kill -9 had just ended, or one whose answer a dropped connection hid; qemu-server refuses the second clone with this 500, and ours retries the instance on another VMID without counting it as a failed scale-up"},
	{operation: "get_nodes_node_qemu_vmid_config", reason: "403 Permission check failed (/vms/N, VM.Audit)",
		why: "the VM is a clone whose task is still running: qemu-server adds a clone to its pool (`pool=`) only when the clone task ends, so until then the roles on the pool give no VM.Audit on `/vms/N`; the plugin looked at it early (after an injected fault hid the clone's outcome) and looks again later"},
	{operation: "get_nodes_node_qemu_vmid_agent_network_get_interfaces", reason: "403 Permission check failed (/vms/N, VM.GuestAgent.Audit|VM.GuestAgent.Unrestricted)",
		why: "the VM had just been deleted: a destroyed VM leaves its pool, and PVE checks the permission before it looks for the VM, so the answer is 403 (`check_any` lists the privileges with `|`), not `does not exist`"},
	{operation: "*", reason: "500 VM N is not running",
		why: "the VM is stopped (its start task failed under the injected faults, and go-proxmox's `Task.Wait` does not read the exit status); PVE answers every guest-agent call on a stopped VM with 500 `VM N is not running`, and the plugin gives the instance up"},
	{contender: "ne0sight", operation: "post_nodes_node_qemu_vmid_clone", reason: "500 unable to create VM N: config file already exists",
		why: "nE0sIghT cloned again onto the VMID of a clone still running, having lost track of the first after an injected fault on its task status; qemu-server refuses a clone whose new configuration file exists, with this 500"},
}

// explain is the known reason for a refusal, or "".
func explain(contender, operation, reason string) string {
	for _, k := range knownRefusals {
		if (k.contender == "" || k.contender == contender) && (k.operation == "*" || k.operation == operation) &&
			strings.HasPrefix(reason, k.reason) {
			return k.why
		}
	}
	return ""
}

// renderOperations writes, per plugin, the PVE operations it used and
// whether each ran cleanly.
func renderOperations(w func(string, ...any), r *report) {
	var used []*contender
	for _, c := range r.Contenders {
		if len(c.Operations) > 0 {
			used = append(used, c)
		}
	}
	if len(used) == 0 {
		return
	}
	w("### PVE operations used\n\n")
	w("Every PVE operation each plugin called in the scale and fault runs, from the simulator's counters. ")
	w("An operation ran cleanly when the simulator answered every request to it with a success, the injected faults apart. ")
	w("The simulator answers as PVE does (a request it answered differently from PVE was a simulator bug, and is fixed with a test ")
	w("that says how a real PVE answers it), so a refusal is one PVE gives too; the reason says why.\n\n")
	w("| Plugin | Operations used | Ran cleanly | Refused by PVE |\n|---|---|---|---|\n")
	for _, c := range used {
		names := sortedOperations(c.Operations)
		var refused []string
		for _, name := range names {
			if !c.Operations[name].clean() {
				refused = append(refused, "`"+name+"`")
			}
		}
		w("| %s | %d | %d | %s |\n", c.Name, len(names), len(names)-len(refused), orText(strings.Join(refused, ", "), "none"))
	}
	w("\n")
	for _, c := range used {
		w("%s:\n\n", c.Name)
		w("| Operation | Requests | Answers (injected faults apart) | Clean | Why PVE refuses it |\n|---|---|---|---|---|\n")
		for _, name := range sortedOperations(c.Operations) {
			use := c.Operations[name]
			clean, why := "yes", ""
			if !use.clean() {
				clean = "no"
				var reasons []string
				for _, reason := range sortedKeys(use.Refusals) {
					text := explain(c.Key, name, reason)
					if text == "" {
						text = "not explained: to check against PVE"
					}
					reasons = append(reasons, fmt.Sprintf("%d × `%s`: %s", use.Refusals[reason], reason, text))
				}
				why = strings.Join(reasons, "; ")
			}
			w("| `%s` | %d | %s | %s | %s |\n", name, use.Requests, formatCounts(use.Answers), clean, strings.ReplaceAll(why, "|", "\\|"))
		}
		w("\n")
	}
}

func sortedOperations(operations map[string]*operationUse) []string {
	names := make([]string, 0, len(operations))
	for name := range operations {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

func sortedKeys(counts map[string]int64) []string {
	keys := make([]string, 0, len(counts))
	for key := range counts {
		keys = append(keys, key)
	}
	sort.Strings(keys)
	return keys
}

// formatCounts writes {"200": 5, "403": 1} as "200 × 5, 403 × 1".
func formatCounts(counts map[string]int64) string {
	if len(counts) == 0 {
		return "none"
	}
	parts := make([]string, 0, len(counts))
	for _, key := range sortedKeys(counts) {
		parts = append(parts, fmt.Sprintf("%s × %d", key, counts[key]))
	}
	return strings.Join(parts, ", ")
}
