//go:build !oldhost

package conformance

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	"gitlab.com/gitlab-org/fleeting/fleeting"
	"gitlab.com/gitlab-org/fleeting/fleeting/provider"
)

// The release binary against the project's Proxmox simulator (pve-sim,
// HTTPS with a pinned fingerprint), driven by the real fleeting host:
// Init → Increase → Update until running → ConnectInfo → Heartbeat →
// Decrease → Update until gone → Shutdown.
func TestRealPluginAgainstSimulator(t *testing.T) {
	url, fingerprint := startSimulator(t, nil)
	work := t.TempDir()
	credentials := filepath.Join(work, "pve.json")
	// The built-in scenario's token (src/sim/config.rs, defaults).
	os.WriteFile(credentials, []byte(`{"token_id":"fleeting@pve!ci","token_secret":"5f0e4c36-0d8b-4f6e-9b1e-7a3c2d1e0f99"}`), 0o600)
	config, _ := json.Marshal(map[string]any{
		"url": url, "tls_fingerprint": fingerprint, "credentials_file_path": credentials,
		"pool": "ci", "template_id": 9000, "max_instances": 3, "group": "conformance",
	})

	runner, err := fleeting.RunPlugin(binary(t, "PLUGIN_BINARY"), config)
	if err != nil {
		t.Fatal(err)
	}
	defer runner.Kill()
	group := runner.InstanceGroup()
	ctx := context.Background()
	info, err := group.Init(ctx, hclog.NewNullLogger(), provider.Settings{ConnectorConfig: provider.ConnectorConfig{
		OS: "linux", Arch: "amd64", Protocol: provider.ProtocolSSH, Keepalive: 30 * time.Second, Timeout: time.Minute,
	}})
	if err != nil {
		t.Fatalf("Init against the simulator: %v", err)
	}
	if info.ID != "proxmox/ci/conformance" || info.MaxSize != 3 {
		t.Fatalf("ProviderInfo %+v", info)
	}
	if n, err := group.Increase(ctx, 2); err != nil || n != 2 {
		t.Fatalf("Increase(2) = %d, %v", n, err)
	}
	var ids []string
	waitFor(t, group, func(s map[string]provider.State) bool {
		ids = ids[:0]
		for id, state := range s {
			if state != provider.StateRunning {
				return false
			}
			ids = append(ids, id)
		}
		return len(ids) == 2
	})
	connect, err := group.ConnectInfo(ctx, ids[0])
	if err != nil {
		t.Fatalf("ConnectInfo: %v", err)
	}
	if connect.InternalAddr == "" || connect.Username != "fleeting" || !strings.Contains(string(connect.Key), "OPENSSH PRIVATE KEY") {
		t.Fatalf("ConnectInfo must carry an address and the generated key: addr=%q user=%q", connect.InternalAddr, connect.Username)
	}
	if err := group.Heartbeat(ctx, ids[0]); err != nil {
		t.Fatalf("Heartbeat: %v", err)
	}
	if removed, err := group.Decrease(ctx, ids); err != nil || len(removed) != 2 {
		t.Fatalf("Decrease = %v, %v", removed, err)
	}
	waitFor(t, group, func(s map[string]provider.State) bool { return len(s) == 0 })
	if err := group.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}

// startSimulator runs pve-sim (HTTPS, time scale 40, seed 7) with `scenario`,
// or its built-in cluster when it is nil, and returns its URL and the
// fingerprint of its certificate.
func startSimulator(t *testing.T, scenario map[string]any) (url, fingerprint string) {
	t.Helper()
	work := t.TempDir()
	ready := filepath.Join(work, "ready.json")
	args := []string{"--listen", "127.0.0.1:0", "--time-scale", "40", "--seed", "7",
		"--cert-dir", filepath.Join(work, "certs"), "--ready-file", ready}
	if scenario != nil {
		scenarioFile := filepath.Join(work, "scenario.json")
		raw, _ := json.Marshal(scenario)
		if err := os.WriteFile(scenarioFile, raw, 0o600); err != nil {
			t.Fatal(err)
		}
		args = append(args, "--scenario", scenarioFile)
	}
	cmd := exec.Command(binary(t, "PVE_SIM_BINARY"), args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	var endpoint struct {
		URL         string `json:"url"`
		Fingerprint string `json:"fingerprint"`
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if raw, err := os.ReadFile(ready); err == nil && json.Unmarshal(raw, &endpoint) == nil {
			return endpoint.URL, endpoint.Fingerprint
		}
		if time.Now().After(deadline) {
			t.Fatal("pve-sim did not become ready")
		}
		time.Sleep(50 * time.Millisecond)
	}
}
