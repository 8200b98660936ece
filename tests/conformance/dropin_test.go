//go:build !oldhost

package conformance

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	"gitlab.com/gitlab-org/fleeting/fleeting"
	"gitlab.com/gitlab-org/fleeting/fleeting/provider"
)

// The template the seed plugin asks for: the guest agent and DHCP, and
// optionally a cloud-init drive (the seed needs none).
func seedTemplate(cloudInit bool) map[string]any {
	config := map[string]any{
		"name": "debian-12-ci", "agent": "enabled=1", "boot": "order=scsi0", "cores": 2, "memory": 2048,
		"ostype": "l26", "scsihw": "virtio-scsi-single", "scsi0": "local-lvm:base-9000-disk-0,iothread=1,size=8G",
		"net0": "virtio=BC:24:11:90:00:00,bridge=vmbr0,firewall=1",
	}
	if cloudInit {
		config["ide2"] = "local-lvm:vm-9000-cloudinit,media=cdrom"
	}
	return map[string]any{"vmid": 9000, "node": "pve1", "template": true, "pool": "ci", "config": config}
}

// startSimulator runs pve-sim with the built-in cluster and `template` as
// its only VM, and returns its URL.
func startSimulator(t *testing.T, template map[string]any) string {
	t.Helper()
	work := t.TempDir()
	scenario := filepath.Join(work, "scenario.json")
	raw, _ := json.Marshal(map[string]any{"vms": []any{template}})
	if err := os.WriteFile(scenario, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	ready := filepath.Join(work, "ready.json")
	cmd := exec.Command(binary(t, "PVE_SIM_BINARY"), "--listen", "127.0.0.1:0", "--time-scale", "40", "--seed", "7",
		"--scenario", scenario, "--cert-dir", filepath.Join(work, "certs"), "--ready-file", ready)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	var endpoint struct {
		URL string `json:"url"`
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if raw, err := os.ReadFile(ready); err == nil && json.Unmarshal(raw, &endpoint) == nil {
			return endpoint.URL
		}
		if time.Now().After(deadline) {
			t.Fatal("pve-sim did not become ready")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A seed user's plugin_config, exactly the seed's documented keys, with the
// seed's password credentials file; Runner brings its own username and key
// (it reads key_path into Key) and leaves use_static_credentials unset.
func TestSeedUsersSettingsWorkUnchanged(t *testing.T) {
	for _, cloudInit := range []bool{false, true} {
		name := "template without cloud-init"
		if cloudInit {
			name = "template with a cloud-init drive"
		}
		t.Run(name, func(t *testing.T) {
			url := startSimulator(t, seedTemplate(cloudInit))
			work := t.TempDir()
			credentials := filepath.Join(work, "credentials.json")
			// The built-in scenario's user (src/sim/config.rs, defaults).
			os.WriteFile(credentials, []byte(`{"realm":"pve","username":"fleeting","password":"fleeting-password"}`), 0o600)
			config, _ := json.Marshal(map[string]any{
				"url": url, "insecure_skip_tls_verify": true, "credentials_file_path": credentials,
				"pool": "ci", "storage": "", "template_id": 9000, "max_instances": 2,
				"instance_network_interface": "ens18",
			})
			runnerKey := []byte("-----BEGIN OPENSSH PRIVATE KEY-----\nRunner's own key, from key_path\n-----END OPENSSH PRIVATE KEY-----\n")

			runner, err := fleeting.RunPlugin(binary(t, "PLUGIN_BINARY"), config)
			if err != nil {
				t.Fatal(err)
			}
			defer runner.Kill()
			group := runner.InstanceGroup()
			ctx := context.Background()
			_, err = group.Init(ctx, hclog.NewNullLogger(), provider.Settings{ConnectorConfig: provider.ConnectorConfig{
				OS: "linux", Protocol: provider.ProtocolSSH, Username: "ubuntu", Key: runnerKey,
				Keepalive: 30 * time.Second, Timeout: time.Minute,
			}})
			if err != nil {
				t.Fatalf("Init with the seed's settings: %v", err)
			}
			if n, err := group.Increase(ctx, 1); err != nil || n != 1 {
				t.Fatalf("Increase(1) = %d, %v", n, err)
			}
			var id string
			waitFor(t, group, func(s map[string]provider.State) bool {
				for instance, state := range s {
					id = instance
					return state == provider.StateRunning
				}
				return false
			})
			connect, err := group.ConnectInfo(ctx, id)
			if err != nil {
				t.Fatalf("ConnectInfo: %v", err)
			}
			if connect.Username != "ubuntu" || !bytes.Equal(connect.Key, runnerKey) || connect.InternalAddr == "" {
				t.Fatalf("ConnectInfo must hand back Runner's own username and key: user=%q key=%q addr=%q",
					connect.Username, connect.Key, connect.InternalAddr)
			}
			if err := group.Heartbeat(ctx, id); err != nil {
				t.Fatalf("Heartbeat: %v", err)
			}
			if removed, err := group.Decrease(ctx, []string{id}); err != nil || len(removed) != 1 {
				t.Fatalf("Decrease = %v, %v", removed, err)
			}
			waitFor(t, group, func(s map[string]provider.State) bool { return len(s) == 0 })
			if err := group.Shutdown(ctx); err != nil {
				t.Fatalf("Shutdown: %v", err)
			}
		})
	}
}
