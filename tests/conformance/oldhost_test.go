//go:build oldhost

package conformance

// Built only with `-tags oldhost`, against the fleeting module that Runner
// 17.5/17.6 pins (no Heartbeat, Suspend or Resume in its interface): an
// older Runner drives the plugin through the calls it knows.

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	"gitlab.com/gitlab-org/fleeting/fleeting"
	"gitlab.com/gitlab-org/fleeting/fleeting/integration"
	"gitlab.com/gitlab-org/fleeting/fleeting/provider"
)

var oldStaticSSH = provider.ConnectorConfig{
	OS: "linux", Arch: "amd64", Protocol: provider.ProtocolSSH,
	Username: "runner", Password: "conformance", UseStaticCredentials: true,
	Keepalive: 30 * time.Second, Timeout: time.Minute,
}

func TestOldHostLifecycle(t *testing.T) {
	raw, _ := json.Marshal(map[string]any{"ssh_addr": "127.0.0.1:2222"})
	runner, err := fleeting.RunPlugin(binary(t, "FAKE_PLUGIN_BINARY"), raw)
	if err != nil {
		t.Fatal(err)
	}
	defer runner.Kill()
	group := runner.InstanceGroup()
	ctx := context.Background()
	if _, err := group.Init(ctx, hclog.NewNullLogger(), provider.Settings{ConnectorConfig: oldStaticSSH}); err != nil {
		t.Fatalf("Init: %v", err)
	}
	if n, err := group.Increase(ctx, 1); err != nil || n != 1 {
		t.Fatalf("Increase: %d %v", n, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		running := false
		if err := group.Update(ctx, func(id string, state provider.State) { running = running || state == provider.StateRunning }); err != nil {
			t.Fatal(err)
		}
		if running {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("never running")
		}
		time.Sleep(100 * time.Millisecond)
	}
	info, err := group.ConnectInfo(ctx, "fake-1")
	if err != nil || info.ExternalAddr == "" {
		t.Fatalf("ConnectInfo: %+v %v", info, err)
	}
	if removed, err := group.Decrease(ctx, []string{"fake-1"}); err != nil || len(removed) != 1 {
		t.Fatalf("Decrease: %v %v", removed, err)
	}
	if err := group.Shutdown(ctx); err != nil && !strings.Contains(err.Error(), "Unimplemented") {
		t.Fatalf("Shutdown: %v", err)
	}
}

func TestOldHostIntegrationProvisioning(t *testing.T) {
	addr := sshServer(t, oldStaticSSH.Username, oldStaticSSH.Password)
	integration.TestProvisioning(t, binary(t, "FAKE_PLUGIN_BINARY"), integration.Config{
		PluginConfig:    map[string]any{"ssh_addr": addr, "creating_ms": 200, "deleting_ms": 200},
		ConnectorConfig: oldStaticSSH,
		MaxInstances:    3,
		UseExternalAddr: true,
	})
}
