package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// The simulated cluster every contender runs against: the simulator's
// built-in cluster (template 9000 on pve1, pool ci, user fleeting@pve with
// token ci), restated here so that the timings, the address space and the
// capacity can follow the benchmark profile.
const (
	tokenID      = "fleeting@pve!ci"
	tokenSecret  = "5f0e4c36-0d8b-4f6e-9b1e-7a3c2d1e0f99"
	userName     = "fleeting"
	userRealm    = "pve"
	userPassword = "fleeting-password"
	poolName     = "ci"
	templateID   = 9000
)

// timings are simulated seconds (src/sim/config.rs, Timings).
type timings struct {
	CloneLinked        float64 `json:"clone_linked"`
	CloneFull          float64 `json:"clone_full"`
	Start              float64 `json:"start"`
	Boot               float64 `json:"boot"`
	AgentDelay         float64 `json:"agent_delay"`
	Stop               float64 `json:"stop"`
	Delete             float64 `json:"delete"`
	ResourcesStaleness float64 `json:"resources_staleness"`
	// Migrate (an offline migration: the copy of the local disks) and
	// Template (the conversion into a template) matter only where a plugin
	// copies the template to other nodes; left out of the scenario when 0
	// (the simulator's defaults).
	Migrate  float64 `json:"migrate,omitempty"`
	Template float64 `json:"template,omitempty"`
}

// The realistic profile: linked clone ≈ 2 s, full clone ≈ 30 s,
// boot plus agent ≈ 20 s (start 1 + boot 14 + agent 5).
var realisticTimings = timings{
	CloneLinked: 2, CloneFull: 30, Start: 1, Boot: 14, AgentDelay: 5, Stop: 1, Delete: 1, ResourcesStaleness: 10,
}

func (t timings) bootAndAgent() float64 { return t.Start + t.Boot + t.AgentDelay }

// scenario writes a pve-sim scenario (JSON) with the given timings and room
// for `capacity` instances (a /16 lease range, storage and memory to match).
func scenario(t timings, capacity int) map[string]any {
	subnet := "10.10.10.0/24"
	if capacity > 200 {
		subnet = "10.64.0.0/16"
	}
	aclUsers := []string{userName + "@" + userRealm}
	acl := func(path string, roles ...string) map[string]any {
		return map[string]any{"path": path, "roles": roles, "users": aclUsers, "tokens": []string{tokenID}, "propagate": true}
	}
	simTimings := map[string]any{
		"clone_linked": t.CloneLinked, "clone_full": t.CloneFull, "start": t.Start, "boot": t.Boot,
		"agent_delay": t.AgentDelay, "stop": t.Stop, "delete": t.Delete, "resources_staleness": t.ResourcesStaleness,
	}
	if t.Migrate > 0 {
		simTimings["migrate"] = t.Migrate
	}
	if t.Template > 0 {
		simTimings["template"] = t.Template
	}
	return map[string]any{
		"pve_version":  "9.1.3",
		"cluster_name": "sim",
		"timings":      simTimings,
		"nodes": []map[string]any{
			{"name": "pve1", "subnet": subnet, "subnet6": "fd00:10:10:10::/64", "cpus": 512, "memory_gib": 16384},
			{"name": "pve2", "subnet": "10.10.20.0/24", "subnet6": "fd00:10:10:20::/64", "cpus": 16, "memory_gib": 128},
		},
		"storages": []map[string]any{
			{"id": "local-lvm", "type": "lvmthin", "content": "images,rootdir", "total_gib": 1 << 20},
			{"id": "local", "type": "dir", "content": "iso,vztmpl,backup,images,snippets", "total_gib": 256},
		},
		// The READMEs of the LukasK32 and nE0sIghT lineages ask for the
		// storage to be a pool member.
		"pools": []map[string]any{{"id": poolName, "comment": "CI runners", "storages": []string{"local-lvm"}}},
		"vms": []map[string]any{{
			"vmid": templateID, "node": "pve1", "template": true, "pool": poolName,
			"config": map[string]string{
				"name": "debian-12-ci", "description": "CI runner template", "agent": "enabled=1", "boot": "order=scsi0",
				"cores": "2", "sockets": "1", "memory": "2048", "ostype": "l26", "scsihw": "virtio-scsi-single",
				"scsi0": "local-lvm:base-9000-disk-0,iothread=1,size=8G", "ide2": "local-lvm:vm-9000-cloudinit,media=cdrom",
				"net0": "virtio=BC:24:11:90:00:00,bridge=vmbr0,firewall=1", "ciuser": "debian", "ipconfig0": "ip=dhcp,ip6=auto",
				"serial0": "socket", "vga": "serial0", "tags": "ci;template",
			},
		}},
		"users": []map[string]any{
			{"userid": "root@pam", "password": "simulator"},
			{"userid": userName + "@" + userRealm, "password": userPassword, "tokens": []map[string]any{{"id": "ci", "secret": tokenSecret}}},
		},
		"acl": []map[string]any{
			acl("/pool/ci", "PVEVMAdmin", "PVEPoolUser"),
			acl("/storage/local-lvm", "PVEDatastoreUser"),
			acl("/storage/local", "PVEDatastoreUser"),
			// PVESDNAdmin: the LukasK32 lineage's README asks for it (PVESDNUser would do).
			acl("/sdn/zones/localnetwork/vmbr0", "PVESDNAdmin"),
			acl("/nodes", "PVEAuditor"),
		},
	}
}

// ticketLifetime is how long a PVE ticket is valid (AUTHKEY rotation aside).
const ticketLifetime = 2 * time.Hour

// withRealTimeTickets makes a ticket last two hours of the wall clock, as on
// a real PVE, whatever the time scale: the scale speeds up Proxmox's tasks,
// not the plugins' own timers. The LukasK32 lineage logs in again every
// real hour; at time scale 20 a ticket of two simulated hours would expire
// after six real minutes, long before that.
func withRealTimeTickets(scenario map[string]any, timeScale float64) {
	timings, ok := scenario["timings"].(map[string]any)
	if !ok {
		timings = map[string]any{}
		scenario["timings"] = timings
	}
	timings["ticket_lifetime"] = ticketLifetime.Seconds() * timeScale
}

// simulator is one running pve-sim process and its admin API.
type simulator struct {
	cmd         *exec.Cmd
	exited      chan error
	URL         string `json:"url"`
	Fingerprint string `json:"fingerprint"`
	CAFile      string `json:"ca_file"`
	timeScale   float64
	http        *http.Client
	// lateSeen is how many late task waits this simulator had reported
	// since its last counter reset (see simlag.go).
	lateSeen int64
}

func startSimulator(binary, work string, t timings, capacity int, timeScale float64, seed int) (*simulator, error) {
	return startSimulatorWith(binary, work, scenario(t, capacity), timeScale, seed)
}

// startSimulatorWith starts pve-sim on loopback with the given scenario.
func startSimulatorWith(binary, work string, scenario map[string]any, timeScale float64, seed int) (*simulator, error) {
	if err := os.MkdirAll(work, 0o755); err != nil {
		return nil, err
	}
	withRealTimeTickets(scenario, timeScale)
	scenarioFile := filepath.Join(work, "scenario.json")
	raw, _ := json.MarshalIndent(scenario, "", "  ")
	if err := os.WriteFile(scenarioFile, raw, 0o644); err != nil {
		return nil, err
	}
	ready := filepath.Join(work, "ready.json")
	os.Remove(ready)
	cmd := exec.Command(binary, "--listen", "127.0.0.1:0", "--scenario", scenarioFile, "--seed", fmt.Sprint(seed),
		"--time-scale", fmt.Sprint(timeScale), "--cert-dir", filepath.Join(work, "certs"), "--ready-file", ready)
	log, err := os.Create(filepath.Join(work, "pve-sim.log"))
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("could not start pve-sim: %w", err)
	}
	sim := &simulator{cmd: cmd, exited: make(chan error, 1), timeScale: timeScale}
	go func() { sim.exited <- cmd.Wait() }()
	deadline := time.After(30 * time.Second)
	for {
		if raw, err := os.ReadFile(ready); err == nil && json.Unmarshal(raw, sim) == nil {
			break
		}
		select {
		case err := <-sim.exited:
			sim.exited <- err
			tail, _ := os.ReadFile(filepath.Join(work, "pve-sim.log"))
			return nil, fmt.Errorf("pve-sim exited (%v): %s", err, strings.TrimSpace(string(tail)))
		case <-deadline:
			sim.stop()
			tail, _ := os.ReadFile(filepath.Join(work, "pve-sim.log"))
			return nil, fmt.Errorf("pve-sim did not become ready within 30 s: %s", strings.TrimSpace(string(tail)))
		case <-time.After(20 * time.Millisecond):
		}
	}
	// Loopback only; the API's certificate is the one pve-sim just made.
	sim.http = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	return sim, nil
}

func (s *simulator) stop() {
	s.observeLag()
	s.cmd.Process.Kill()
	err := <-s.exited
	s.exited <- err
}

func (s *simulator) admin(method, path string, body any, out any) error {
	var reader io.Reader
	if body != nil {
		raw, _ := json.Marshal(body)
		reader = bytes.NewReader(raw)
	}
	request, _ := http.NewRequestWithContext(context.Background(), method, s.URL+"/_sim/"+path, reader)
	request.Header.Set("Content-Type", "application/json")
	response, err := s.http.Do(request)
	if err != nil {
		return fmt.Errorf("could not call the simulator's admin API %s %s: %w", method, path, err)
	}
	defer response.Body.Close()
	raw, _ := io.ReadAll(response.Body)
	if response.StatusCode != http.StatusOK {
		return fmt.Errorf("could not call the simulator's admin API %s %s: %s %s", method, path, response.Status, raw)
	}
	if out != nil {
		return json.Unmarshal(raw, out)
	}
	return nil
}

type counters struct {
	lagCounters
	RequestsTotal int64            `json:"requests_total"`
	ByOperation   map[string]int64 `json:"by_operation"`
	ByStatus      map[string]int64 `json:"by_status"`
	Injected      int64            `json:"injected_errors"`
	TasksStarted  map[string]int64 `json:"tasks_started"`
	// AnswersByOperation and Refusals leave out the injected faults:
	// operationId → status → answers, and operationId → reason → answers.
	AnswersByOperation map[string]map[string]int64 `json:"answers_by_operation"`
	Refusals           map[string]map[string]int64 `json:"refusals"`
}

func (s *simulator) counters() (counters, error) {
	var c counters
	err := s.admin(http.MethodGet, "counters", nil, &c)
	if err == nil {
		partLag.observe(c.lagCounters, &s.lateSeen)
	}
	return c, err
}

// observeLag adds the simulator's lag so far to the part's (an exited
// simulator has nothing more to tell).
func (s *simulator) observeLag() {
	select {
	case err := <-s.exited:
		s.exited <- err
	default:
		_, _ = s.counters()
	}
}

func (s *simulator) resetCounters() error {
	s.observeLag()
	partLag.restart(&s.lateSeen)
	return s.admin(http.MethodPost, "counters/reset", nil, nil)
}

type inventory struct {
	VMs []struct {
		VMID     int               `json:"vmid"`
		Node     string            `json:"node"`
		Template bool              `json:"template"`
		Status   string            `json:"status"`
		Config   map[string]string `json:"config"`
	} `json:"vms"`
	OrphanedDisks []any `json:"orphaned_disks"`
}

// leftovers describes the instance VMs still in the simulator, e.g.
// "100 (stopped, name fleeting-creating)".
func (s *simulator) leftovers() string {
	var inv inventory
	if err := s.admin(http.MethodGet, "inventory", nil, &inv); err != nil {
		return err.Error()
	}
	var parts []string
	for _, vm := range inv.VMs {
		if !vm.Template {
			parts = append(parts, fmt.Sprintf("%d (%s, name %s)", vm.VMID, vm.Status, vm.Config["name"]))
		}
	}
	return strings.Join(parts, ", ")
}

// instances counts the VMs that are not the template.
func (s *simulator) instances() (int, error) {
	var inv inventory
	if err := s.admin(http.MethodGet, "inventory", nil, &inv); err != nil {
		return 0, err
	}
	n := 0
	for _, vm := range inv.VMs {
		if !vm.Template {
			n++
		}
	}
	return n, nil
}

// injectTransientErrors makes a fraction of all API requests answer 503.
func (s *simulator) injectTransientErrors(rate float64) error {
	return s.admin(http.MethodPost, "faults", map[string]any{"operation": "*", "error_rate": rate, "status": 503}, nil)
}

func (s *simulator) clearFaults() error { return s.admin(http.MethodDelete, "faults", nil, nil) }

// simSeconds converts a real duration into simulated seconds.
func (s *simulator) simSeconds(d time.Duration) float64 { return d.Seconds() * s.timeScale }
