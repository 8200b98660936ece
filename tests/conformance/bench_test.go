//go:build !oldhost

package conformance

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	"gitlab.com/gitlab-org/fleeting/fleeting"
	"gitlab.com/gitlab-org/fleeting/fleeting/provider"
)

// Time from exec to the handshake line on stdout, as go-plugin's host
// waits for it. Reported as ns/op; no target is asserted here.
func BenchmarkExecToHandshake(b *testing.B) {
	path := binary(b, "PLUGIN_BINARY")
	var total time.Duration
	for i := 0; i < b.N; i++ {
		cmd := exec.Command(path)
		cmd.Env = append(os.Environ(), handshake.MagicCookieKey+"="+handshake.MagicCookieValue, "PLUGIN_PROTOCOL_VERSIONS=0")
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			b.Fatal(err)
		}
		started := time.Now()
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		line, err := bufio.NewReader(stdout).ReadString('\n')
		elapsed := time.Since(started)
		if err != nil || !strings.HasPrefix(line, "1|0|unix|") {
			b.Fatalf("handshake line %q: %v", line, err)
		}
		total += elapsed
		cmd.Process.Signal(os.Interrupt)
		cmd.Wait()
	}
	b.ReportMetric(float64(total.Microseconds())/1000/float64(b.N), "ms-to-handshake")
}

// One empty Update (no instances) through the real Go host: the per-RPC
// cost of transport and adapter. Also reports the plugin's RSS after Init.
func BenchmarkEmptyUpdate(b *testing.B) {
	path := binary(b, "FAKE_PLUGIN_BINARY")
	runner := runFakeB(b, path)
	group := runner.InstanceGroup()
	if _, err := group.Init(context.Background(), hclog.NewNullLogger(), provider.Settings{ConnectorConfig: staticSSH}); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := group.Update(context.Background(), func(string, provider.State) {}); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(rssKB(b, path)), "idle-RSS-KB")
}

func runFakeB(b *testing.B, path string) interface {
	InstanceGroup() provider.InstanceGroup
	Kill()
} {
	b.Helper()
	runner, err := fleeting.RunPlugin(path, []byte(`{"ssh_addr":"127.0.0.1:1"}`))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(runner.Kill)
	return runner
}

// rssKB reads VmRSS of this process's child running path.
func rssKB(b *testing.B, path string) int {
	b.Helper()
	if resolved, err := filepath.EvalSymlinks(path); err == nil {
		path = resolved
	}
	path, _ = filepath.Abs(path)
	entries, _ := os.ReadDir("/proc")
	for _, entry := range entries {
		status, err := os.ReadFile("/proc/" + entry.Name() + "/status")
		if err != nil || !strings.Contains(string(status), "\nPPid:\t"+strconv.Itoa(os.Getpid())+"\n") {
			continue
		}
		if exe, _ := os.Readlink("/proc/" + entry.Name() + "/exe"); exe != path {
			continue
		}
		for _, line := range strings.Split(string(status), "\n") {
			if strings.HasPrefix(line, "VmRSS:") {
				fields := strings.Fields(line)
				kb, _ := strconv.Atoi(fields[1])
				return kb
			}
		}
	}
	b.Fatalf("no child process runs %s", path)
	return 0
}
