package main

// The switch-over from the seed (issue 12): the seed plugin's own binary
// provisions first, through the real fleeting host, and is then ended as
// Runner ends a plugin whose binary is swapped (go-plugin Kill, no
// Decrease). Our binary then starts with the same plugin_config and
// Runner's own credentials, and must finish what the seed left (delete the
// half-created and half-removed VMs, adopt or delete the running ones),
// leave nothing behind and touch nothing else.

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"gitlab.com/gitlab-org/fleeting/fleeting/provider"
	"golang.org/x/crypto/ssh"
)

// The seed's default instance names (its settings.go), which the
// switch-over config keeps.
const (
	seedNameCreating = "fleeting-creating"
	seedNameRunning  = "fleeting-running"
	seedNameRemoving = "fleeting-removing"
	// ourMarker starts the description of every VM our plugin owns.
	ourMarker = "fleeting-plugin-proxmox:"
	// The decoys: a VM named like the seed's running ones in another pool,
	// and a foreign VM in the pool.
	decoyOtherPool = 8001
	decoyForeign   = 8002
	otherPool      = "other"
	// switchoverScale is the simulator's time scale. The seed waits in real
	// time (it polls tasks every 10 s), so a larger scale only shortens the
	// simulated clone, boot and agent delays.
	switchoverScale = 5
	// runnerUsername is the username Runner's connector_config brings.
	runnerUsername = "ubuntu"
)

// switchover is the report's section: one run per seed-lineage competitor
// given, or why it was not run.
type switchover struct {
	NotRun string             `json:"not_run,omitempty"`
	Runs   []switchoverResult `json:"runs,omitempty"`
}

type switchoverResult struct {
	// Seed is the competitor whose binary provisioned first.
	Seed string `json:"seed"`
	// Settings is the plugin_config both plugins were given (secrets replaced).
	Settings json.RawMessage `json:"settings,omitempty"`
	// Steps are what was done, in order, with what was seen.
	Steps []string `json:"steps"`
	// WaitSeconds is the pause between the seed's kill and our start
	// (-switchover-wait; 0: at once, as a restarted Runner does).
	WaitSeconds float64 `json:"wait_seconds"`
	// SeedLeft are the VMs the seed left in the pool when it was killed.
	SeedLeft []seedVM `json:"seed_left"`
	// StatesLeft names the seed's states that could not be left behind
	// (with why), when one could not.
	StatesMissing []string `json:"states_missing,omitempty"`
	Decoys        []decoy  `json:"decoys"`
	// Deleted: the seed's VMs that are gone. Adopted: reported running by
	// our Update. LeftBehind: VMs in the pool with the seed's names and no
	// marker of ours.
	Deleted    int `json:"deleted"`
	Adopted    int `json:"adopted"`
	LeftBehind int `json:"left_behind"`
	// AdoptedUsable: adopted instances whose ConnectInfo returns an address
	// and Runner's username and key unchanged.
	AdoptedUsable int `json:"adopted_usable"`
	// Stable is true when the state settled before the deadline.
	Stable bool `json:"stable"`
	// InitSeconds: exec of our binary → Init returned. StableSeconds:
	// exec of our binary → every seed VM deleted or adopted and two
	// Updates alike. Real seconds (the seed's waits are real time).
	InitSeconds   float64 `json:"init_seconds"`
	StableSeconds float64 `json:"stable_seconds"`
	Updates       int     `json:"updates"`
	// After our Decrease of everything ours: VMs in the pool other than
	// the decoys and the template, and orphaned disks in the simulator.
	AfterDecreaseLeft    int     `json:"after_decrease_left"`
	AfterDecreaseOrphans int     `json:"after_decrease_orphaned_disks"`
	AfterDecreaseSeconds float64 `json:"after_decrease_seconds"`
	DecoysUnchanged      bool    `json:"decoys_unchanged"`
	Passed               bool    `json:"passed"`
	Verdict              string  `json:"verdict"`
	Error                string  `json:"error,omitempty"`
	ElapsedSeconds       float64 `json:"elapsed_seconds"`
}

// seedVM is one VM the seed left, and what became of it.
type seedVM struct {
	VMID   int    `json:"vmid"`
	Name   string `json:"name"`
	Status string `json:"status"`
	Lock   string `json:"lock,omitempty"`
	// Fate: deleted, adopted (with our instance id), or left behind.
	Fate string `json:"fate"`
}

// decoy is a VM that must not change.
type decoy struct {
	VMID int    `json:"vmid"`
	What string `json:"what"`
	// UnchangedBySeed: the same before the seed started and when it was
	// killed (the seed must not touch it either; informational).
	UnchangedBySeed bool `json:"unchanged_by_seed"`
	// UnchangedAfterTakeover / UnchangedAfterDecrease: the simulator's view
	// of it byte for byte as when our plugin started.
	UnchangedAfterTakeover bool `json:"unchanged_after_takeover"`
	UnchangedAfterDecrease bool `json:"unchanged_after_decrease"`
	before                 []byte
}

// seedLineage are the given competitors that speak the seed's config format.
func seedLineage(r *report) []*contender {
	var out []*contender
	for _, c := range r.Contenders[1:] {
		if c.Style == styleLukasK32 {
			out = append(out, c)
		}
	}
	return out
}

// switchoverScenario is the benchmark cluster plus the decoys: a pool
// `other` the user may also manage, holding a VM named like the seed's
// running instances, and a foreign VM in the runner's pool.
func switchoverScenario() map[string]any {
	s := scenario(realisticTimings, 10)
	s["pools"] = append(s["pools"].([]map[string]any), map[string]any{"id": otherPool, "comment": "another team's VMs"})
	aclUsers := []string{userName + "@" + userRealm}
	s["acl"] = append(s["acl"].([]map[string]any),
		map[string]any{"path": "/pool/" + otherPool, "roles": []string{"PVEVMAdmin"}, "users": aclUsers, "tokens": []string{tokenID}, "propagate": true})
	vm := func(vmid int, name, pool string) map[string]any {
		return map[string]any{"vmid": vmid, "node": "pve1", "running": true, "pool": pool, "config": map[string]string{
			"name": name, "agent": "enabled=1", "ostype": "l26", "cores": "2", "memory": "2048",
			"net0":  "virtio,bridge=vmbr0",
			"scsi0": fmt.Sprintf("local-lvm:vm-%d-disk-0,size=8G", vmid),
			"ide2":  fmt.Sprintf("local-lvm:vm-%d-cloudinit,media=cdrom", vmid),
		}}
	}
	s["vms"] = append(s["vms"].([]map[string]any), vm(decoyOtherPool, seedNameRunning, otherPool), vm(decoyForeign, "build-server", poolName))
	return s
}

// seedSettings are the seed's documented settings (its README "Plugin
// settings"): a password credentials file, a linked clone (`storage = ""`),
// the template, the limit, the interface to read the address from. Both
// plugins get exactly these bytes.
func seedSettings(sim *simulator, work string) ([]byte, error) {
	credentials := filepath.Join(work, "pve-password.json")
	raw, _ := json.Marshal(map[string]string{"realm": userRealm, "username": userName, "password": userPassword})
	if err := os.WriteFile(credentials, raw, 0o600); err != nil {
		return nil, fmt.Errorf("could not write %s: %w", credentials, err)
	}
	return json.Marshal(map[string]any{
		"url": sim.URL, "insecure_skip_tls_verify": true, "credentials_file_path": credentials,
		"pool": poolName, "storage": "", "template_id": templateID, "max_instances": 5,
		"instance_network_interface": "ens18",
	})
}

// runnerConnector is Runner's connector_config as the seed's users have it:
// a username and a key (Runner reads key_path into key), no static
// credentials flag.
func runnerConnector() (provider.Settings, error) {
	_, private, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return provider.Settings{}, err
	}
	block, err := ssh.MarshalPrivateKey(private, "runner's own key")
	if err != nil {
		return provider.Settings{}, err
	}
	return provider.Settings{ConnectorConfig: provider.ConnectorConfig{
		OS: "linux", Arch: "amd64", Protocol: provider.ProtocolSSH, Username: runnerUsername,
		Key: pem.EncodeToMemory(block), Keepalive: 30 * time.Second, Timeout: time.Minute,
	}}, nil
}

// simVM is the part of the simulator's view of a VM the switch-over reads.
type simVM struct {
	VMID     int               `json:"vmid"`
	Name     *string           `json:"name"`
	Status   string            `json:"status"`
	Lock     *string           `json:"lock"`
	Pool     *string           `json:"pool"`
	Template bool              `json:"template"`
	Config   map[string]string `json:"config"`
}

func (v simVM) name() string {
	if v.Name == nil {
		return ""
	}
	return *v.Name
}

func (v simVM) inPool(pool string) bool { return v.Pool != nil && *v.Pool == pool }

func (v simVM) ours() bool {
	return strings.HasPrefix(strings.TrimSpace(v.Config["description"]), ourMarker)
}

func isSeedName(name string) bool {
	return name == seedNameCreating || name == seedNameRunning || name == seedNameRemoving
}

type simInventory struct {
	VMs           []simVM `json:"vms"`
	OrphanedDisks []any   `json:"orphaned_disks"`
	RunningTasks  int     `json:"running_tasks"`
}

func (s *simulator) fullInventory() (simInventory, error) {
	var inv simInventory
	err := s.admin(http.MethodGet, "inventory", nil, &inv)
	return inv, err
}

// vmRaw is the simulator's view of one VM, as it sends it (nil when gone).
func (s *simulator) vmRaw(vmid int) ([]byte, error) {
	var raw json.RawMessage
	if err := s.admin(http.MethodGet, fmt.Sprintf("vms/%d", vmid), nil, &raw); err != nil {
		if strings.Contains(err.Error(), "404") {
			return nil, nil
		}
		return nil, err
	}
	return raw, nil
}

// vmidOf reads the VMID in our instance id ("201-abcdef") or the seed's ("201").
func vmidOf(id string) int {
	head, _, _ := strings.Cut(id, "-")
	var n int
	fmt.Sscanf(head, "%d", &n)
	return n
}

// switchOver runs the whole switch-over once for one seed-lineage binary.
func switchOver(seed, us *contender, simBinary, work string, wait time.Duration) (result switchoverResult) {
	started := time.Now()
	result.Seed = seed.Name
	result.WaitSeconds = wait.Seconds()
	step := func(format string, args ...any) {
		text := fmt.Sprintf(format, args...)
		result.Steps = append(result.Steps, fmt.Sprintf("[%5.1f s] %s", time.Since(started).Seconds(), text))
		logf("  switch-over: %s", text)
	}
	defer func() {
		result.ElapsedSeconds = time.Since(started).Seconds()
		result.Passed = result.Error == "" && result.Stable && result.LeftBehind == 0 && result.Deleted+result.Adopted == len(result.SeedLeft) &&
			len(result.SeedLeft) > 0 && result.DecoysUnchanged && result.AfterDecreaseLeft == 0 && result.AfterDecreaseOrphans == 0 &&
			result.AdoptedUsable == result.Adopted
		if result.Passed {
			result.Verdict = fmt.Sprintf("passed: of the %d VMs the seed left, %d deleted and %d adopted (all usable), 0 left behind; decoys unchanged; after Decrease only the decoys and the template remain, 0 orphaned disks",
				len(result.SeedLeft), result.Deleted, result.Adopted)
		} else {
			var why []string
			if result.Error != "" {
				why = append(why, result.Error)
			}
			if len(result.SeedLeft) == 0 {
				why = append(why, "the seed left nothing to take over")
			}
			if !result.Stable && result.Error == "" {
				why = append(why, "did not settle before the deadline")
			}
			if result.LeftBehind > 0 {
				why = append(why, fmt.Sprintf("%d of the seed's VMs left behind", result.LeftBehind))
			}
			if unaccounted := len(result.SeedLeft) - result.Deleted - result.Adopted; unaccounted > 0 {
				why = append(why, fmt.Sprintf("%d of the seed's VMs neither deleted nor adopted", unaccounted))
			}
			if result.AdoptedUsable < result.Adopted {
				why = append(why, fmt.Sprintf("%d of %d adopted instances not usable with Runner's credentials", result.Adopted-result.AdoptedUsable, result.Adopted))
			}
			if !result.DecoysUnchanged {
				why = append(why, "a decoy changed")
			}
			if result.AfterDecreaseLeft > 0 {
				why = append(why, fmt.Sprintf("%d VMs besides the decoys and the template left after Decrease", result.AfterDecreaseLeft))
			}
			if result.AfterDecreaseOrphans > 0 {
				why = append(why, fmt.Sprintf("%d orphaned disks", result.AfterDecreaseOrphans))
			}
			result.Verdict = "failed: " + strings.Join(why, "; ")
		}
		step("%s", result.Verdict)
	}()
	fail := func(format string, args ...any) switchoverResult {
		result.Error = fmt.Sprintf(format, args...)
		return result
	}

	sim, err := startSimulatorWith(simBinary, work, switchoverScenario(), switchoverScale, 13)
	if err != nil {
		return fail("%v", err)
	}
	defer sim.stop()
	config, err := seedSettings(sim, work)
	if err != nil {
		return fail("%v", err)
	}
	result.Settings = redactedSettings(config)
	settings, err := runnerConnector()
	if err != nil {
		return fail("could not make Runner's key: %v", err)
	}
	decoys := []*decoy{
		{VMID: templateID, What: "the template"},
		{VMID: decoyOtherPool, What: fmt.Sprintf("a VM named %s in pool %s", seedNameRunning, otherPool)},
		{VMID: decoyForeign, What: fmt.Sprintf("a foreign VM (build-server) in pool %s", poolName)},
	}
	atStart := map[int][]byte{}
	for _, d := range decoys {
		if atStart[d.VMID], err = sim.vmRaw(d.VMID); err != nil || atStart[d.VMID] == nil {
			return fail("could not read decoy %d: %v", d.VMID, err)
		}
	}
	step("simulator up (time scale %d) with the template %d and the decoys %d (%s) and %d (%s)",
		switchoverScale, templateID, decoyOtherPool, decoys[1].What, decoyForeign, decoys[2].What)

	// 1. The seed provisions, then is killed as Runner kills a plugin whose
	// binary is swapped.
	if err := os.MkdirAll(filepath.Join(work, "seed"), 0o755); err != nil {
		return fail("%v", err)
	}
	seedSession, err := startSession(seed, config, filepath.Join(work, "seed"), "switch-over (seed provisions)", settings)
	if err != nil {
		return fail("%s: %v", seed.Name, err)
	}
	killed := false
	defer func() {
		if !killed {
			seedSession.kill()
			seedSession.log.close()
		}
	}()
	step("%s: Init done", seed.Name)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	running, err := seedRunning(ctx, seedSession, 3)
	if err != nil {
		return fail("%s: %v", seed.Name, err)
	}
	step("%s: Increase(3) → %d running: %s", seed.Name, len(running), strings.Join(running, ", "))
	// One more running, then Decrease it: the seed renames it to its
	// removing name and leaves the deletion to its collector, which waits
	// 10 s after the rename before it looks.
	more, err := seedRunning(ctx, seedSession, 1)
	if err != nil {
		return fail("%s: %v", seed.Name, err)
	}
	var fourth string
	for _, id := range more {
		if !contains(running, id) {
			fourth = id
		}
	}
	if fourth == "" {
		return fail("%s: Increase(1) gave no new running instance: %v", seed.Name, more)
	}
	removed, err := seedSession.decrease(ctx, []string{fourth})
	step("%s: Increase(1) → %s running; Decrease([%s]) → %v (err %v)", seed.Name, fourth, fourth, removed, err)
	// One more Increase, and the kill while its clone is still named
	// creating (the seed renames it only once its agent answers).
	increaseDone := make(chan error, 1)
	go func() {
		ictx, icancel := context.WithTimeout(context.Background(), limits.Increase)
		defer icancel()
		_, err := seedSession.group.Increase(ictx, 1)
		increaseDone <- err
	}()
	creating := 0
	for deadline := time.Now().Add(30 * time.Second); creating == 0 && time.Now().Before(deadline); {
		if inv, err := sim.fullInventory(); err == nil {
			for _, vm := range inv.VMs {
				if vm.inPool(poolName) && vm.name() == seedNameCreating {
					creating = vm.VMID
				}
			}
		}
		if creating == 0 {
			time.Sleep(20 * time.Millisecond)
		}
	}
	killStarted := time.Now()
	seedSession.kill()
	killed = true
	seedSession.log.close()
	gone := !alive(seedSession.pid)
	if creating != 0 {
		step("%s: Increase(1) in flight, VM %d named %s; killed the plugin (go-plugin Kill, no Shutdown, no Decrease) in %.1f s, process gone: %v",
			seed.Name, creating, seedNameCreating, time.Since(killStarted).Seconds(), gone)
	} else {
		step("%s: no clone named %s appeared within 30 s of Increase(1); killed the plugin anyway", seed.Name, seedNameCreating)
	}
	select {
	case err := <-increaseDone:
		step("%s: the host's Increase call returned after the kill: %v", seed.Name, err)
	case <-time.After(limits.Increase + 10*time.Second):
		step("%s: the host's Increase call did not return after the kill", seed.Name)
	}

	// What the seed left.
	inv, err := sim.fullInventory()
	if err != nil {
		return fail("%v", err)
	}
	states := map[string]bool{}
	for _, vm := range inv.VMs {
		if vm.inPool(poolName) && !vm.Template && isSeedName(vm.name()) {
			lock := ""
			if vm.Lock != nil {
				lock = *vm.Lock
			}
			result.SeedLeft = append(result.SeedLeft, seedVM{VMID: vm.VMID, Name: vm.name(), Status: vm.Status, Lock: lock})
			states[vm.name()] = true
		}
	}
	for _, name := range []string{seedNameCreating, seedNameRunning, seedNameRemoving} {
		if !states[name] {
			result.StatesMissing = append(result.StatesMissing, name)
		}
	}
	step("the seed left %d VMs in pool %s: %s", len(result.SeedLeft), poolName, describeSeedVMs(result.SeedLeft))
	if len(result.StatesMissing) > 0 {
		step("states the seed could not be made to leave: %s", strings.Join(result.StatesMissing, ", "))
	}

	// 2. The decoys as our plugin will find them.
	for _, d := range decoys {
		if d.before, err = sim.vmRaw(d.VMID); err != nil || d.before == nil {
			return fail("could not read decoy %d: %v", d.VMID, err)
		}
		d.UnchangedBySeed = bytes.Equal(d.before, atStart[d.VMID])
	}
	step("decoys recorded (the simulator's view of each): %s", describeDecoys(decoys, func(d *decoy) bool { return d.UnchangedBySeed }, "unchanged by the seed"))

	// 3. Ours, same plugin_config, Runner's credentials.
	if wait > 0 {
		step("waiting %s before starting ours (-switchover-wait)", wait)
		time.Sleep(wait)
	}
	if err := os.MkdirAll(filepath.Join(work, "ours"), 0o755); err != nil {
		return fail("%v", err)
	}
	oursStarted := time.Now()
	s, err := startSession(us, config, filepath.Join(work, "ours"), "switch-over from the seed", settings)
	if err != nil {
		return fail("%s: %v", us.Name, err)
	}
	defer s.close()
	result.InitSeconds = time.Since(oursStarted).Seconds()
	step("%s: started with the same plugin_config and Runner's username %q and key; Init returned after %.1f s", us.Name, runnerUsername, result.InitSeconds)

	seedVMIDs := map[int]bool{}
	for _, vm := range result.SeedLeft {
		seedVMIDs[vm.VMID] = true
	}
	var last map[string]provider.State
	uctx, ucancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer ucancel()
	// Settled: either every VM the seed left is finished and two Updates
	// agree, or nothing changed (Update, the pool, no task) for quietFor.
	const quietFor = 20 * time.Second
	fingerprint, quietSince := "", time.Now()
	for {
		got, err := s.states(uctx)
		if err == nil {
			result.Updates++
		}
		inv, ierr := sim.fullInventory()
		if err == nil && ierr == nil {
			if print := describeStates(got) + " | " + poolFingerprint(inv); print != fingerprint || inv.RunningTasks > 0 {
				fingerprint, quietSince = print, time.Now()
			}
		}
		if err == nil && ierr == nil && (finished(inv, got, last, seedVMIDs) || time.Since(quietSince) >= quietFor) {
			result.Stable = true
			result.StableSeconds = time.Since(oursStarted).Seconds()
			if !finished(inv, got, last, seedVMIDs) {
				result.StableSeconds -= quietFor.Seconds()
				step("%s: nothing changed for %s (Update, the pool, no task running), yet not every VM the seed left is finished", us.Name, quietFor)
			}
			last = got
			break
		}
		if err == nil {
			last = got
		}
		if s.gone() {
			return fail("%s: %v", us.Name, s.err())
		}
		if uctx.Err() != nil {
			step("%s: not settled 3 minutes after its start; last Update: %s; the simulator: %s", us.Name, describeStates(last), sim.leftovers())
			break
		}
		time.Sleep(time.Second)
	}
	if result.Stable {
		step("%s: settled %.1f s after its start (%d Updates so far): %s", us.Name, result.StableSeconds, result.Updates, describeStates(last))
	}

	// Counts.
	inv, err = sim.fullInventory()
	if err != nil {
		return fail("%v", err)
	}
	present := map[int]simVM{}
	for _, vm := range inv.VMs {
		present[vm.VMID] = vm
	}
	adoptedAs := map[int]string{}
	for id, state := range last {
		if state == provider.StateRunning && seedVMIDs[vmidOf(id)] {
			adoptedAs[vmidOf(id)] = id
		}
	}
	for i, vm := range result.SeedLeft {
		now, there := present[vm.VMID]
		switch {
		case !there:
			result.Deleted++
			result.SeedLeft[i].Fate = "deleted"
		case adoptedAs[vm.VMID] != "":
			result.Adopted++
			id := adoptedAs[vm.VMID]
			info, err := s.connectInfo(context.Background(), id)
			usable := err == nil && (info.InternalAddr != "" || info.ExternalAddr != "") &&
				info.Username == runnerUsername && bytes.Equal(info.Key, settings.Key)
			fate := fmt.Sprintf("adopted as %s", id)
			if usable {
				result.AdoptedUsable++
				fate += fmt.Sprintf(" (ConnectInfo: %s, Runner's username and key)", orText(info.InternalAddr, info.ExternalAddr))
			} else if err != nil {
				fate += fmt.Sprintf(" (ConnectInfo failed: %v)", err)
			} else {
				fate += fmt.Sprintf(" (ConnectInfo: address %q, username %q, Runner's key %v)", orText(info.InternalAddr, info.ExternalAddr), info.Username, bytes.Equal(info.Key, settings.Key))
			}
			result.SeedLeft[i].Fate = fate
		default:
			result.SeedLeft[i].Fate = fmt.Sprintf("still there: %s, name %s, marker of ours %v", now.Status, now.name(), now.ours())
		}
	}
	for _, vm := range inv.VMs {
		if vm.inPool(poolName) && !vm.Template && isSeedName(vm.name()) && !vm.ours() {
			result.LeftBehind++
		}
	}
	for _, d := range decoys {
		after, err := sim.vmRaw(d.VMID)
		d.UnchangedAfterTakeover = err == nil && bytes.Equal(after, d.before)
	}
	step("%s: %d of the seed's VMs deleted, %d adopted (%d usable with Runner's credentials), %d left behind (seed names, no marker); %s",
		us.Name, result.Deleted, result.Adopted, result.AdoptedUsable, result.LeftBehind,
		describeDecoys(decoys, func(d *decoy) bool { return d.UnchangedAfterTakeover }, "unchanged"))

	// 4. Runner scales to zero: Decrease everything ours.
	var ids []string
	for id, state := range last {
		if state != provider.StateDeleting && state != provider.StateDeleted {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	decreaseStarted := time.Now()
	if len(ids) > 0 {
		removed, err := s.decrease(context.Background(), ids)
		step("%s: Decrease(%v) → %v (err %v)", us.Name, ids, removed, err)
	} else {
		step("%s: nothing of ours to Decrease", us.Name)
	}
	decoyIDs := map[int]bool{}
	for _, d := range decoys {
		decoyIDs[d.VMID] = true
	}
	dctx, dcancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer dcancel()
	// Done when only the decoys and the template remain, or when nothing
	// changed for quietFor (what is left then stays).
	fingerprint, quietSince = "", time.Now()
	for {
		inv, err = sim.fullInventory()
		if err != nil {
			return fail("%v", err)
		}
		extra := 0
		for _, vm := range inv.VMs {
			if !decoyIDs[vm.VMID] {
				extra++
			}
		}
		result.AfterDecreaseLeft, result.AfterDecreaseOrphans = extra, len(inv.OrphanedDisks)
		got, err := s.states(dctx)
		if print := describeStates(got) + " | " + poolFingerprint(inv); err != nil || print != fingerprint || inv.RunningTasks > 0 {
			fingerprint, quietSince = print, time.Now()
		}
		if extra == 0 && inv.RunningTasks == 0 || time.Since(quietSince) >= quietFor || s.gone() || dctx.Err() != nil {
			break
		}
		time.Sleep(time.Second)
	}
	result.AfterDecreaseSeconds = time.Since(decreaseStarted).Seconds()
	result.DecoysUnchanged = true
	for _, d := range decoys {
		after, err := sim.vmRaw(d.VMID)
		d.UnchangedAfterDecrease = err == nil && bytes.Equal(after, d.before)
		result.DecoysUnchanged = result.DecoysUnchanged && d.UnchangedAfterTakeover && d.UnchangedAfterDecrease
		result.Decoys = append(result.Decoys, *d)
	}
	var pool []string
	for _, vm := range inv.VMs {
		if vm.inPool(poolName) {
			pool = append(pool, fmt.Sprintf("%d (%s)", vm.VMID, vm.name()))
		}
	}
	step("after Decrease (%.1f s): pool %s holds %s; %d other VMs left, %d orphaned disks; %s", result.AfterDecreaseSeconds, poolName,
		strings.Join(pool, ", "), result.AfterDecreaseLeft, result.AfterDecreaseOrphans,
		describeDecoys(decoys, func(d *decoy) bool { return d.UnchangedAfterDecrease }, "unchanged"))
	return result
}

// seedRunning asks the seed for n more instances (its Increase returns once
// they run) and waits until Update reports them running.
func seedRunning(ctx context.Context, s *session, n int) ([]string, error) {
	before, err := s.states(ctx)
	if err != nil {
		return nil, err
	}
	want := n
	for _, state := range before {
		if state == provider.StateRunning {
			want++
		}
	}
	if got, err := s.increase(ctx, n); err != nil || got != n {
		return nil, fmt.Errorf("Increase(%d) accepted %d: %v", n, got, err)
	}
	for {
		states, err := s.states(ctx)
		var running []string
		for id, state := range states {
			if state == provider.StateRunning {
				running = append(running, id)
			}
		}
		sort.Strings(running)
		if err == nil && len(running) >= want {
			return running, nil
		}
		if s.gone() || ctx.Err() != nil {
			return nil, fmt.Errorf("%d of %d running (last Update error %v, %v)", len(running), want, err, s.err())
		}
		time.Sleep(time.Second)
	}
}

// poolFingerprint sums up what of the pool can change.
func poolFingerprint(inv simInventory) string {
	var parts []string
	for _, vm := range inv.VMs {
		if vm.inPool(poolName) {
			lock := ""
			if vm.Lock != nil {
				lock = *vm.Lock
			}
			parts = append(parts, fmt.Sprintf("%d/%s/%s/%s/%v", vm.VMID, vm.name(), vm.Status, lock, vm.ours()))
		}
	}
	return strings.Join(parts, ",")
}

// finished: no VM the seed left is still unfinished (present and not
// reported running by our Update), no VM with the seed's names and no
// marker of ours is in the pool, no task runs, and two Updates in a row
// say the same.
func finished(inv simInventory, states, last map[string]provider.State, seed map[int]bool) bool {
	if inv.RunningTasks > 0 || last == nil || len(states) != len(last) {
		return false
	}
	for id, state := range states {
		if last[id] != state || state != provider.StateRunning {
			return false
		}
	}
	running := map[int]bool{}
	for id := range states {
		running[vmidOf(id)] = true
	}
	for _, vm := range inv.VMs {
		if seed[vm.VMID] && !running[vm.VMID] {
			return false
		}
		if vm.inPool(poolName) && !vm.Template && isSeedName(vm.name()) && !vm.ours() {
			return false
		}
	}
	return true
}

func describeSeedVMs(vms []seedVM) string {
	var parts []string
	for _, vm := range vms {
		text := fmt.Sprintf("%d %s (%s", vm.VMID, vm.Name, vm.Status)
		if vm.Lock != "" {
			text += ", lock " + vm.Lock
		}
		parts = append(parts, text+")")
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

func describeDecoys(decoys []*decoy, ok func(*decoy) bool, word string) string {
	var parts []string
	for _, d := range decoys {
		verdict := word
		if !ok(d) {
			verdict = "CHANGED"
		}
		parts = append(parts, fmt.Sprintf("%d %s", d.VMID, verdict))
	}
	return "decoys: " + strings.Join(parts, ", ")
}

func describeStates(states map[string]provider.State) string {
	ids := make([]string, 0, len(states))
	for id := range states {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var parts []string
	for _, id := range ids {
		parts = append(parts, fmt.Sprintf("%s %s", id, states[id]))
	}
	if len(parts) == 0 {
		return "no instances"
	}
	return strings.Join(parts, ", ")
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// renderSwitchover writes the report's "Switch-over from the seed" section.
func renderSwitchover(w func(format string, args ...any), r *report) {
	w("## 6. Switch-over from the seed\n\n")
	w("Issue 12: a user of the seed plugin swaps the binary and changes nothing else. The seed lineage's own binary provisions first through ")
	w("the real fleeting host with the seed's documented settings (a password credentials file, `storage = \"\"`, `template_id`, `max_instances`, ")
	w("`instance_network_interface`) and Runner's connector_config with username `%s` and Runner's own key: Init, Increase(3) until its 3 VMs run ", runnerUsername)
	w("(named `%s`); Increase(1) and Decrease of that one (renamed `%s`, which the seed's collector deletes 10 s later); Increase(1) again, ", seedNameRunning, seedNameRemoving)
	w("and while that clone is still named `%s` the seed's process is ended as Runner ends a plugin whose binary is swapped: ", seedNameCreating)
	w("go-plugin's Kill, no Decrease. Decoys sit in the simulator from the start (scenario file): the template, a VM named `%s` in pool `%s` ", seedNameRunning, otherPool)
	w("(which the user may manage too), and a foreign VM in pool `%s`. Our binary then starts with the same plugin_config bytes and the same ", poolName)
	w("connector_config, Init, and Update every second until it settles (deadline 3 minutes): every VM the seed left is deleted or reported ")
	w("running, no VM with the seed's names and no marker of ours is in the pool, no task runs, and two Updates agree. ")
	w("*Deleted* counts the seed's VMs gone from the simulator, *adopted* those our Update reports running (each checked with ConnectInfo: ")
	w("an address and Runner's username and key, unchanged), *left behind* the VMs in the pool with the seed's names and no marker of ours. ")
	w("The decoys are compared with the simulator's view of them, byte for byte, as our plugin found them. Then everything ours is Decreased ")
	w("and the simulator must hold only the decoys and the template, with no orphaned disk. Times are real seconds (the seed waits in real time).\n\n")
	if r.Switchover == nil {
		w("Not run: this report predates the scenario.\n\n")
		return
	}
	if r.Switchover.NotRun != "" {
		w("%s.\n\n", strings.TrimSuffix(strings.ToUpper(r.Switchover.NotRun[:1])+r.Switchover.NotRun[1:], "."))
		return
	}
	w("| Seed binary | Left by the seed | Deleted | Adopted (usable) | Left behind | Decoys unchanged | Init | Settled after | After Decrease | Verdict |\n")
	w("|---|---|---|---|---|---|---|---|---|---|\n")
	for _, run := range r.Switchover.Runs {
		left := fmt.Sprintf("%d: %s", len(run.SeedLeft), describeSeedVMs(run.SeedLeft))
		settledText := "not settled"
		if run.Stable {
			settledText = fmt.Sprintf("%.1f s (%d Updates)", run.StableSeconds, run.Updates)
		}
		w("| %s | %s | %d | %d (%d) | %d | %s | %.1f s | %s | %d VMs besides decoys and template, %d orphaned disks | %s |\n",
			run.Seed, oneLine(left), run.Deleted, run.Adopted, run.AdoptedUsable, run.LeftBehind, yesNo(run.DecoysUnchanged),
			run.InitSeconds, settledText, run.AfterDecreaseLeft, run.AfterDecreaseOrphans, verdictCell(run))
	}
	w("\n")
	for _, run := range r.Switchover.Runs {
		w("### %s → ours\n\n", run.Seed)
		if run.WaitSeconds > 0 {
			w("Ours started %.1f s after the seed's kill (`-switchover-wait`).\n\n", run.WaitSeconds)
		} else {
			w("Ours started as soon as the seed's process was gone, as a restarted Runner does (`-switchover-wait 0`).\n\n")
		}
		if len(run.StatesMissing) > 0 {
			w("States the seed could not be made to leave: %s.\n\n", strings.Join(run.StatesMissing, ", "))
		}
		w("| VM the seed left | Name | Status | Fate |\n|---|---|---|---|\n")
		for _, vm := range run.SeedLeft {
			status := vm.Status
			if vm.Lock != "" {
				status += ", lock " + vm.Lock
			}
			w("| %d | `%s` | %s | %s |\n", vm.VMID, vm.Name, status, oneLine(orText(vm.Fate, "not checked")))
		}
		w("\n| Decoy | What | Unchanged by the seed | after the takeover | after Decrease |\n|---|---|---|---|---|\n")
		for _, d := range run.Decoys {
			w("| %d | %s | %s | %s | %s |\n", d.VMID, d.What, yesNo(d.UnchangedBySeed), yesNo(d.UnchangedAfterTakeover), yesNo(d.UnchangedAfterDecrease))
		}
		w("\nSteps:\n\n```text\n%s\n```\n\n", strings.Join(run.Steps, "\n"))
		if len(run.Settings) > 0 {
			w("plugin_config given to both:\n\n```json\n%s\n```\n\n", indentJSON(run.Settings))
		}
	}
}

func yesNo(ok bool) string {
	if ok {
		return "yes"
	}
	return "**no**"
}

func verdictCell(run switchoverResult) string {
	if run.Passed {
		return "passed"
	}
	return "**" + oneLine(run.Verdict) + "**"
}
