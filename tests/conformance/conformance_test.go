//go:build !oldhost

package conformance

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	_ "github.com/hashicorp/go-plugin" // registers internal/plugin/grpc_*.proto
	"gitlab.com/gitlab-org/fleeting/fleeting"
	"gitlab.com/gitlab-org/fleeting/fleeting/integration"
	"gitlab.com/gitlab-org/fleeting/fleeting/provider"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
)

func TestHandshakeWithoutAutoMTLS(t *testing.T) {
	for _, variable := range []string{"PLUGIN_BINARY", "FAKE_PLUGIN_BINARY"} {
		t.Run(variable, func(t *testing.T) {
			client, protocol, conn := startRaw(t, binary(t, variable), false)
			if client.NegotiatedVersion() != 0 {
				t.Fatalf("negotiated app protocol %d, want fleeting's 0", client.NegotiatedVersion())
			}
			if err := protocol.Ping(); err != nil {
				t.Fatalf("health check of service %q: %v", "plugin", err)
			}
			status, err := healthpb.NewHealthClient(conn).Check(context.Background(), &healthpb.HealthCheckRequest{Service: "plugin"})
			if err != nil || status.Status != healthpb.HealthCheckResponse_SERVING {
				t.Fatalf("health: %v %v", status, err)
			}
		})
	}
}

func TestHandshakeWithAutoMTLS(t *testing.T) {
	_, protocol, _ := startRaw(t, binary(t, "PLUGIN_BINARY"), true)
	if err := protocol.Ping(); err != nil {
		t.Fatalf("health check over mutual TLS: %v", err)
	}
}

func TestStartedByHandShowsGoPluginMessage(t *testing.T) {
	cmd := exec.Command(binary(t, "PLUGIN_BINARY"))
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("want exit status 1, got %v", err)
	}
	if !strings.Contains(stderr.String(), "This binary is a plugin. These are not meant to be executed directly.") {
		t.Fatalf("stderr lacks go-plugin's message: %q", stderr.String())
	}
	if stdout.Len() != 0 {
		t.Fatalf("nothing may reach stdout: %q", stdout.String())
	}
}

// Our compiled descriptors, read over gRPC reflection from the running
// binary, must equal the ones the upstream Go modules register.
func TestDescriptorsMatchUpstream(t *testing.T) {
	_, _, conn := startRaw(t, binary(t, "PLUGIN_BINARY"), false)
	stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(context.Background())
	if err != nil {
		t.Fatalf("reflection: %v", err)
	}
	for _, file := range []string{
		"proto/instance_group.proto",
		"internal/plugin/grpc_broker.proto",
		"internal/plugin/grpc_controller.proto",
		"internal/plugin/grpc_stdio.proto",
		"grpc/health/v1/health.proto",
	} {
		upstreamDescriptor, err := protoregistry.GlobalFiles.FindFileByPath(file)
		if err != nil {
			t.Fatalf("upstream does not register %s: %v", file, err)
		}
		upstream := protodesc.ToFileDescriptorProto(upstreamDescriptor)
		upstream.SourceCodeInfo = nil

		if err := stream.Send(&reflectionpb.ServerReflectionRequest{
			MessageRequest: &reflectionpb.ServerReflectionRequest_FileByFilename{FileByFilename: file},
		}); err != nil {
			t.Fatal(err)
		}
		response, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		files := response.GetFileDescriptorResponse().GetFileDescriptorProto()
		if len(files) == 0 {
			t.Fatalf("the plugin does not serve %s: %v", file, response.GetErrorResponse())
		}
		var ours descriptorpb.FileDescriptorProto
		if err := proto.Unmarshal(files[0], &ours); err != nil {
			t.Fatal(err)
		}
		ours.SourceCodeInfo = nil
		if !proto.Equal(&ours, upstream) {
			t.Errorf("%s differs from upstream:\nours:     %v\nupstream: %v", file, &ours, upstream)
		}
	}
}

func runFake(t *testing.T, config map[string]any, logger hclog.Logger) *fleeting.Runner {
	t.Helper()
	raw, err := json.Marshal(config)
	if err != nil {
		t.Fatal(err)
	}
	var options []fleeting.PluginOption
	if logger != nil {
		options = append(options, fleeting.WithPluginLogger(logger))
	}
	runner, err := fleeting.RunPlugin(binary(t, "FAKE_PLUGIN_BINARY"), raw, options...)
	if err != nil {
		t.Fatalf("RunPlugin: %v", err)
	}
	t.Cleanup(runner.Kill)
	return runner
}

var staticSSH = provider.ConnectorConfig{
	OS: "linux", Arch: "amd64", Protocol: provider.ProtocolSSH,
	Username: "runner", Password: "conformance", UseStaticCredentials: true,
	Keepalive: 30 * time.Second, Timeout: time.Minute,
}

func waitFor(t *testing.T, group provider.InstanceGroup, done func(map[string]provider.State) bool) map[string]provider.State {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		states := map[string]provider.State{}
		if err := group.Update(context.Background(), func(id string, state provider.State) { states[id] = state }); err != nil {
			t.Fatalf("Update: %v", err)
		}
		if done(states) {
			return states
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatal("condition not reached within 20 s")
	return nil
}

// Init → Increase → Update until running → ConnectInfo → Heartbeat →
// Decrease → Update until gone → Shutdown, call by call.
func TestLifecycle(t *testing.T) {
	ctx := context.Background()
	runner := runFake(t, map[string]any{"ssh_addr": "127.0.0.1:2222"}, nil)
	group := runner.InstanceGroup()

	if _, err := group.Increase(ctx, 1); err == nil || !strings.Contains(err.Error(), "Init first") {
		t.Fatalf("a call before Init must fail clearly, got %v", err)
	}
	info, err := group.Init(ctx, hclog.NewNullLogger(), provider.Settings{ConnectorConfig: staticSSH})
	if err != nil {
		t.Fatalf("Init: %v", err)
	}
	if info.ID != "fake/conformance" || info.MaxSize != 10 || !strings.Contains(info.BuildInfo, "sha=") {
		t.Fatalf("unexpected ProviderInfo %+v", info)
	}
	if n, err := group.Increase(ctx, 2); err != nil || n != 2 {
		t.Fatalf("Increase(2) = %d, %v", n, err)
	}
	states := waitFor(t, group, func(s map[string]provider.State) bool {
		return len(s) == 2 && s["fake-1"] == provider.StateRunning && s["fake-2"] == provider.StateRunning
	})
	t.Logf("running: %v", states)

	connect, err := group.ConnectInfo(ctx, "fake-1")
	if err != nil {
		t.Fatalf("ConnectInfo: %v", err)
	}
	if connect.ExternalAddr != "127.0.0.1:2222" || connect.Username != "runner" || connect.Protocol != provider.ProtocolSSH ||
		connect.Keepalive != 30*time.Second || connect.Timeout != time.Minute {
		t.Fatalf("unexpected ConnectInfo %+v", connect)
	}
	if err := group.Heartbeat(ctx, "fake-1"); err != nil {
		t.Fatalf("Heartbeat of a running instance: %v", err)
	}
	if err := group.Heartbeat(ctx, "fake-99"); err == nil || !strings.Contains(err.Error(), "instance is unhealthy") {
		t.Fatalf("Heartbeat of a missing instance must say unhealthy, got %v", err)
	}
	if _, err := group.Suspend(ctx, []string{"fake-1"}); !errors.Is(err, provider.ErrSuspendResumeNotSupported) {
		t.Fatalf("Suspend without the capability: %v", err)
	}
	if n, err := group.Increase(ctx, 20); err != nil || n != 8 {
		t.Fatalf("Increase beyond max_size: a partial success reports the accepted count, got %d, %v", n, err)
	}
	removed, err := group.Decrease(ctx, []string{"fake-1", "fake-2", "unknown"})
	if err != nil || len(removed) != 2 {
		t.Fatalf("Decrease = %v, %v", removed, err)
	}
	waitFor(t, group, func(s map[string]provider.State) bool {
		_, one := s["fake-1"]
		_, two := s["fake-2"]
		return !one && !two
	})
	if err := group.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}

// fleeting's own provisioning test, as plugin authors run it.
func TestFleetingIntegrationProvisioning(t *testing.T) {
	addr := sshServer(t, staticSSH.Username, staticSSH.Password)
	integration.TestProvisioning(t, binary(t, "FAKE_PLUGIN_BINARY"), integration.Config{
		PluginConfig:    map[string]any{"ssh_addr": addr, "creating_ms": 200, "deleting_ms": 200},
		ConnectorConfig: staticSSH,
		MaxInstances:    3,
		UseExternalAddr: true,
	})
}

// A bad plugin_config must come back as an Init error, with the plugin
// still serving afterwards.
func TestBadPluginConfigIsAnInitError(t *testing.T) {
	for _, variable := range []string{"PLUGIN_BINARY", "FAKE_PLUGIN_BINARY"} {
		t.Run(variable, func(t *testing.T) {
			runner, err := fleeting.RunPlugin(binary(t, variable), []byte(`{"ssh_addr": 5, "url": [`))
			if err != nil {
				t.Fatalf("RunPlugin: %v", err)
			}
			defer runner.Kill()
			_, err = runner.InstanceGroup().Init(context.Background(), hclog.NewNullLogger(), provider.Settings{ConnectorConfig: staticSSH})
			if err == nil || !strings.Contains(err.Error(), "plugin_config") {
				t.Fatalf("want an Init error naming plugin_config, got %v", err)
			}
			// Still alive: a second call is answered, not a transport error.
			_, err = runner.InstanceGroup().Increase(context.Background(), 1)
			if err == nil || strings.Contains(err.Error(), "Unavailable") || strings.Contains(err.Error(), "connection") {
				t.Fatalf("the plugin must keep serving after a bad config, got %v", err)
			}
		})
	}
}

func TestLogLineReachesHostAtItsLevel(t *testing.T) {
	var output syncBuffer
	logger := hclog.New(&hclog.LoggerOptions{Name: "fleeting-plugin", Level: hclog.Trace, Output: &output})
	runner := runFake(t, map[string]any{"ssh_addr": "127.0.0.1:1", "init_log_level": "warn"}, logger)
	if _, err := runner.InstanceGroup().Init(context.Background(), hclog.NewNullLogger(), provider.Settings{ConnectorConfig: staticSSH}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		for _, line := range strings.Split(output.String(), "\n") {
			if strings.Contains(line, "fake group initialised") {
				if !strings.Contains(line, "[WARN]") || !strings.Contains(line, "marker=fake-init") {
					t.Fatalf("log line arrived at the wrong level or without its fields: %q", line)
				}
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("the plugin's log line never reached the host; host log:\n%s", output.String())
}

// Killed mid-call: Runner's Kill (controller Shutdown, then SIGKILL after
// 2 s) and a bare SIGKILL both end a hanging call with an error, promptly.
func TestPluginKilledMidCall(t *testing.T) {
	t.Run("host Kill", func(t *testing.T) {
		runner := runFake(t, map[string]any{"ssh_addr": "127.0.0.1:1", "update_delay_ms": 30000}, nil)
		group := runner.InstanceGroup()
		if _, err := group.Init(context.Background(), hclog.NewNullLogger(), provider.Settings{ConnectorConfig: staticSSH}); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- group.Update(context.Background(), func(string, provider.State) {}) }()
		time.Sleep(300 * time.Millisecond)
		started := time.Now()
		runner.Kill()
		select {
		case err := <-done:
			if err == nil {
				t.Fatal("an Update cut off by Kill must fail")
			}
			t.Logf("Update ended after %v: %v", time.Since(started), err)
		case <-time.After(10 * time.Second):
			t.Fatal("the call hung after Kill")
		}
	})
	t.Run("SIGKILL", func(t *testing.T) {
		path := binary(t, "FAKE_PLUGIN_BINARY")
		runner := runFake(t, map[string]any{"ssh_addr": "127.0.0.1:1", "update_delay_ms": 30000}, nil)
		group := runner.InstanceGroup()
		if _, err := group.Init(context.Background(), hclog.NewNullLogger(), provider.Settings{ConnectorConfig: staticSSH}); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- group.Update(context.Background(), func(string, provider.State) {}) }()
		time.Sleep(300 * time.Millisecond)
		pid := childPID(t, path)
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-done:
			if err == nil {
				t.Fatal("an Update cut off by SIGKILL must fail")
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the call hung after SIGKILL")
		}
	})
}

// childPID finds the newest child process of this test running path.
func childPID(t *testing.T, path string) int {
	t.Helper()
	if resolved, err := filepath.EvalSymlinks(path); err == nil {
		path = resolved
	}
	path, _ = filepath.Abs(path)
	entries, _ := os.ReadDir("/proc")
	best := 0
	for _, entry := range entries {
		var pid int
		if _, err := fmt.Sscan(entry.Name(), &pid); err != nil {
			continue
		}
		status, err := os.ReadFile("/proc/" + entry.Name() + "/status")
		if err != nil || !strings.Contains(string(status), "\nPPid:\t"+strconv.Itoa(os.Getpid())+"\n") {
			continue
		}
		exe, err := os.Readlink("/proc/" + entry.Name() + "/exe")
		if err == nil && exe == path && pid > best {
			best = pid
		}
	}
	if best == 0 {
		t.Fatalf("no child process runs %s", path)
	}
	return best
}

// SIGTERM (and SIGINT) let a call in progress finish, then the plugin exits.
func TestSigtermFinishesTheCallInProgress(t *testing.T) {
	path := binary(t, "FAKE_PLUGIN_BINARY")
	runner := runFake(t, map[string]any{"ssh_addr": "127.0.0.1:1", "update_delay_ms": 600}, nil)
	group := runner.InstanceGroup()
	if _, err := group.Init(context.Background(), hclog.NewNullLogger(), provider.Settings{ConnectorConfig: staticSSH}); err != nil {
		t.Fatal(err)
	}
	pid := childPID(t, path)
	done := make(chan error, 1)
	go func() { done <- group.Update(context.Background(), func(string, provider.State) {}) }()
	time.Sleep(200 * time.Millisecond)
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("the call in progress must complete after SIGTERM, got %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the call hung after SIGTERM")
	}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if err := syscall.Kill(pid, 0); err != nil {
			return // exited
		}
		if status, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status"); err == nil && strings.Contains(string(status), "State:\tZ") {
			return // exited, not yet reaped by go-plugin
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal("the plugin did not exit after SIGTERM")
}

// A partial Suspend/Resume travels in the status details, as fleeting's Go
// server sends it: the host gets the succeeded ids and the error.
func TestSuspendResumePartialResults(t *testing.T) {
	ctx := context.Background()
	runner := runFake(t, map[string]any{"ssh_addr": "127.0.0.1:1", "suspend": true, "creating_ms": 0}, nil)
	group := runner.InstanceGroup()
	info, err := group.Init(ctx, hclog.NewNullLogger(), provider.Settings{ConnectorConfig: staticSSH})
	if err != nil {
		t.Fatal(err)
	}
	if len(info.Capabilities) != 1 || info.Capabilities[0] != provider.CapabilitySuspendResume {
		t.Fatalf("capabilities %v", info.Capabilities)
	}
	if _, err := group.Increase(ctx, 1); err != nil {
		t.Fatal(err)
	}
	waitFor(t, group, func(s map[string]provider.State) bool { return s["fake-1"] == provider.StateRunning })
	succeeded, err := group.Suspend(ctx, []string{"fake-1", "fake-404"})
	if err == nil || !strings.Contains(err.Error(), "could not suspend instance fake-404") {
		t.Fatalf("want the failure for fake-404, got %v", err)
	}
	if len(succeeded) != 1 || succeeded[0] != "fake-1" {
		t.Fatalf("the succeeded ids must survive the error: %v", succeeded)
	}
	states := waitFor(t, group, func(s map[string]provider.State) bool { return s["fake-1"] == provider.StateSuspended })
	t.Logf("after suspend: %v", states)
	resumed, err := group.Resume(ctx, []string{"fake-1"})
	if err != nil || len(resumed) != 1 {
		t.Fatalf("Resume: %v %v", resumed, err)
	}
}
