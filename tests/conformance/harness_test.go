// Package conformance drives fleeting-plugin-proxmox binaries exactly as
// GitLab Runner does: through hashicorp/go-plugin and the fleeting module at
// the versions Runner pins. It builds nothing of ours; it takes the binaries'
// paths from the environment:
//
//	PLUGIN_BINARY       the release binary (fleeting-plugin-proxmox)
//	FAKE_PLUGIN_BINARY  the same transport and adapter over an in-memory group
//	                    (cargo build --example fleeting-plugin-fake)
package conformance

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"

	hclog "github.com/hashicorp/go-hclog"
	plugin "github.com/hashicorp/go-plugin"
	"golang.org/x/crypto/ssh"
	"google.golang.org/grpc"
)

// fleeting's handshake, as its internal/plugin package defines it.
var handshake = plugin.HandshakeConfig{
	ProtocolVersion:  0,
	MagicCookieKey:   "FLEETING_INSTANCE_GROUP_PLUGIN",
	MagicCookieValue: "4c6410b1-cb78-4962-8c76-ab936d0ea908",
}

func binary(t testing.TB, variable string) string {
	t.Helper()
	path := os.Getenv(variable)
	if path == "" {
		t.Fatalf("%s is not set; see tests/conformance/run.sh", variable)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("%s: %v", variable, err)
	}
	return path
}

// rawPlugin hands out the plugin's gRPC connection itself, so a test can
// call any service on it (health, reflection, the fleeting service).
type rawPlugin struct{ plugin.NetRPCUnsupportedPlugin }

func (rawPlugin) GRPCServer(*plugin.GRPCBroker, *grpc.Server) error {
	return errors.New("host side only")
}

func (rawPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, conn *grpc.ClientConn) (interface{}, error) {
	return conn, nil
}

// startRaw launches a binary with go-plugin's own client, as Runner's
// fleeting host does, optionally with AutoMTLS.
func startRaw(t testing.TB, path string, autoMTLS bool) (*plugin.Client, plugin.ClientProtocol, *grpc.ClientConn) {
	t.Helper()
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  handshake,
		VersionedPlugins: map[int]plugin.PluginSet{0: {"instancegroup": rawPlugin{}}},
		Cmd:              exec.Command(path),
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		AutoMTLS:         autoMTLS,
		Logger:           hclog.New(&hclog.LoggerOptions{Level: hclog.Warn, Output: io.Discard}),
	})
	t.Cleanup(client.Kill)
	protocol, err := client.Client()
	if err != nil {
		t.Fatalf("handshake with %s (AutoMTLS %v) failed: %v", path, autoMTLS, err)
	}
	raw, err := protocol.Dispense("instancegroup")
	if err != nil {
		t.Fatalf("dispense: %v", err)
	}
	return client, protocol, raw.(*grpc.ClientConn)
}

// syncBuffer collects the host-side log of a plugin.
type syncBuffer struct {
	mu   sync.Mutex
	text strings.Builder
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.text.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.text.String()
}

// sshServer answers `echo 'hello world'` for fleeting's integration test,
// standing in for the instances the fake group reports.
func sshServer(t testing.TB, user, password string) string {
	t.Helper()
	config := &ssh.ServerConfig{
		PasswordCallback: func(meta ssh.ConnMetadata, pass []byte) (*ssh.Permissions, error) {
			if meta.User() == user && string(pass) == password {
				return nil, nil
			}
			return nil, errors.New("denied")
		},
	}
	config.AddHostKey(hostKey(t))
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { listener.Close() })
	go func() {
		for {
			conn, err := listener.Accept()
			if err != nil {
				return
			}
			go serveSSH(conn, config)
		}
	}()
	return listener.Addr().String()
}

func serveSSH(conn net.Conn, config *ssh.ServerConfig) {
	_, channels, requests, err := ssh.NewServerConn(conn, config)
	if err != nil {
		conn.Close()
		return
	}
	go ssh.DiscardRequests(requests)
	for newChannel := range channels {
		if newChannel.ChannelType() != "session" {
			newChannel.Reject(ssh.UnknownChannelType, "only sessions")
			continue
		}
		channel, channelRequests, err := newChannel.Accept()
		if err != nil {
			continue
		}
		go func() {
			defer channel.Close()
			for request := range channelRequests {
				if request.Type != "exec" {
					request.Reply(false, nil)
					continue
				}
				request.Reply(true, nil)
				var payload struct{ Command string }
				ssh.Unmarshal(request.Payload, &payload)
				status := uint32(0)
				if strings.Contains(payload.Command, "echo 'hello world'") {
					io.WriteString(channel, "hello world\n")
				} else {
					io.WriteString(channel.Stderr(), "unexpected command\n")
					status = 1
				}
				channel.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{status}))
				return
			}
		}()
	}
}
