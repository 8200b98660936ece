package main

import (
	"slices"
	"strings"
)

// knownCause is why a competitor crashed or failed, found by reading its
// source and its API client's (issue 14: a competitor's own failure is
// reported with the reason). A crash is matched by the first frame of the
// panicking goroutine, anything else by its error text.
type knownCause struct {
	// frame is a substring of the panicking goroutine's first frame.
	frame string
	// text is a substring of an error or an incident's detail.
	text string
	// root is the fault behind it, shared by several causes; where is how
	// it surfaces in this one.
	root, where string
}

// go-proxmox's response handling: only 500 and 501 become errors, so any
// other failure status is decoded like a success, and PVE's error body has
// `"data": null`.
const goProxmoxReadsA503AsData = "go-proxmox, the API client of the seed's lineage, treats only HTTP 500 and 501 as errors. " +
	"An injected `503 Service Unavailable`, whose body is `{\"data\":null,…}` as PVE writes every error, is decoded as a successful answer without data."

var knownCauses = []knownCause{
	{frame: "go-proxmox.(*Client).Pool(", root: goProxmoxReadsA503AsData,
		where: "`Client.Pool` gets a nil pool and sets its id (go-proxmox v0.2 and earlier)"},
	{frame: "go-proxmox.(*Task).Ping(", root: goProxmoxReadsA503AsData,
		where: "a clone or start answered so carries no task id; `NewTask` returns nil for the empty UPID, and `Task.Wait` pings the nil task"},
	{frame: "go-proxmox.(*Node).VirtualMachine(", root: goProxmoxReadsA503AsData,
		where: "the VM's `status/current` decodes as a nil VM, into which `Node.VirtualMachine` then reads the config"},
	{frame: "go-proxmox.(*Client).Node(", root: goProxmoxReadsA503AsData,
		where: "the node's `status` decodes as a nil node, whose name `Client.Node` then sets"},
	{text: "pool not found", root: goProxmoxReadsA503AsData,
		where: "go-proxmox from v0.3 on asks `GET /pools?poolid=`, decodes the 503 as an empty list and reports the existing pool as `pool not found`; the plugin's Init fails on it"},
}

// panicFrame is the first frame of the panicking goroutine in a plugin's
// last log lines, or "".
func panicFrame(lines []string) string {
	for i, line := range lines {
		if strings.Contains(line, "[running]:") && i+1 < len(lines) {
			return lines[i+1]
		}
	}
	return ""
}

// causeOf is the known cause of an incident: a panic by its first frame,
// anything else by its detail; nil when none is known.
func causeOf(i incident) *knownCause {
	if frame := panicFrame(i.LastLines); frame != "" {
		for n := range knownCauses {
			if k := &knownCauses[n]; k.frame != "" && strings.Contains(frame, k.frame) {
				return k
			}
		}
	}
	return causeOfError(i.Detail)
}

// causeOfError is the known cause of a failed scenario's error text, or nil.
func causeOfError(text string) *knownCause {
	for n, k := range knownCauses {
		if k.text != "" && strings.Contains(text, k.text) {
			return &knownCauses[n]
		}
	}
	return nil
}

// renderCauses writes why the crashes and failures of the run happened:
// each root fault once, then where it surfaced with how often it struck
// each plugin, then how many incidents no known cause explains (their log
// lines are above).
func renderCauses(w func(string, ...any), r *report) {
	counts := map[*knownCause]map[string]int{}
	unexplained := map[string]int{}
	count := func(k *knownCause, name string) {
		if counts[k] == nil {
			counts[k] = map[string]int{}
		}
		counts[k][name]++
	}
	for _, c := range r.Contenders {
		for _, i := range c.Incidents {
			if k := causeOf(i); k != nil {
				count(k, c.Name)
			} else {
				unexplained[c.Name]++
			}
		}
	}
	for _, results := range [][]faultResult{r.Faults, r.FaultsNodes} {
		for _, f := range results {
			if k := causeOfError(f.Error); k != nil {
				count(k, f.Contender)
			}
		}
	}
	for _, s := range r.Scale {
		if k := causeOfError(s.Error); k != nil {
			count(k, s.Contender)
		}
	}
	if len(counts) == 0 && len(unexplained) == 0 {
		return
	}
	w("**Why.** Each crash is matched by the first frame of its panicking goroutine, and each failed scenario by its error, ")
	w("against the causes found in the plugins' source and their API client's. The 503s are the injected faults.\n\n")
	var roots []string
	for n := range knownCauses {
		if k := &knownCauses[n]; counts[k] != nil && !slices.Contains(roots, k.root) {
			roots = append(roots, k.root)
		}
	}
	for _, root := range roots {
		w("%s\n\n| Where it surfaces | Crashes and failed scenarios |\n|---|---|\n", root)
		for n := range knownCauses {
			if k := &knownCauses[n]; k.root == root && counts[k] != nil {
				w("| %s | %s |\n", k.where, countsText(counts[k]))
			}
		}
		w("\n")
	}
	if len(unexplained) > 0 {
		w("No known cause, read their log lines above: %s.\n\n", countsText(unexplained))
	}
}
