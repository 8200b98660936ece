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

// The built-in cluster, its template as the seed plugin asks for one: the
// guest agent and DHCP, with or without a cloud-init drive (the seed needs none).
func seedScenario(t *testing.T, cloudInit bool) map[string]any {
	t.Helper()
	out, err := exec.Command(binary(t, "PVE_SIM_BINARY"), "--print-scenario").Output()
	if err != nil {
		t.Fatalf("pve-sim --print-scenario: %v", err)
	}
	var scenario map[string]any
	if err := json.Unmarshal(out, &scenario); err != nil {
		t.Fatal(err)
	}
	if !cloudInit {
		for _, vm := range scenario["vms"].([]any) {
			config := vm.(map[string]any)["config"].(map[string]any)
			delete(config, "ide2")
			delete(config, "ciuser")
			delete(config, "ipconfig0")
		}
	}
	return scenario
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
			url, _ := startSimulator(t, seedScenario(t, cloudInit))
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
