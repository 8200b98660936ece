package main

// Driving a plugin process so that nothing waits forever: every call to
// the plugin has a deadline; a plugin that exits (or panics) is noticed at
// its next call, one that does not answer within the deadline is killed;
// both are recorded with the exit status and the last log lines, and the
// scenario ends so that the run can go on with the next one.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	plugin "github.com/hashicorp/go-plugin"
	"gitlab.com/gitlab-org/fleeting/fleeting"
	"gitlab.com/gitlab-org/fleeting/fleeting/provider"
	"google.golang.org/grpc"
)

// deadlines for each kind of call to a plugin. Tests shorten them.
type deadlines struct {
	Init, Increase, Update, ConnectInfo, Decrease, Shutdown time.Duration
	// Kill bounds go-plugin's Kill (controller Shutdown, 2 s grace, SIGKILL);
	// past it the harness sends SIGKILL itself.
	Kill time.Duration
	// Start bounds exec → handshake line (go-plugin's StartTimeout).
	Start time.Duration
}

var limits = deadlines{
	Init: 2 * time.Minute, Increase: 2 * time.Minute, Update: time.Minute, ConnectInfo: time.Minute,
	Decrease: 2 * time.Minute, Shutdown: time.Minute, Kill: 15 * time.Second, Start: time.Minute,
}

// incident is one time a plugin process exited, panicked or hung.
type incident struct {
	Scenario string `json:"scenario"`
	// Kind is exited, panicked, hung, or killed (it did not exit within 2 s
	// of the controller's Shutdown, as Runner allows, and got SIGKILL).
	Kind string `json:"kind"`
	// During names the call that noticed it (Init, Update, ...).
	During string `json:"during,omitempty"`
	// Status is the exit status ("exit status 2", "signal: killed").
	Status    string   `json:"status,omitempty"`
	Detail    string   `json:"detail,omitempty"`
	LastLines []string `json:"last_lines,omitempty"`
}

func (i incident) String() string {
	text := i.Kind
	if i.During != "" {
		text += " during " + i.During
	}
	if i.Status != "" {
		text += " (" + i.Status + ")"
	}
	if i.Detail != "" {
		text += ": " + i.Detail
	}
	return text
}

func (c *contender) record(i incident) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.Incidents = append(c.Incidents, i)
}

// pluginLog is the host-side log of one plugin process: everything goes to
// a file, the last lines stay in memory, and go-plugin's "plugin process
// exited" line gives the exit status.
type pluginLog struct {
	file *os.File
	mu   sync.Mutex
	tail []string
	part string
	// exited is closed when go-plugin reports that the process ended.
	exited chan struct{}
	status string
}

const tailLines = 40

var exitedLine = regexp.MustCompile(`plugin process exited: .*?(?:error="([^"]*)")?\s*$`)

func newPluginLog(path string) (*pluginLog, error) {
	file, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("could not create %s: %w", path, err)
	}
	return &pluginLog{file: file, exited: make(chan struct{})}, nil
}

func (l *pluginLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.file.Write(p)
	text := l.part + string(p)
	lines := strings.Split(text, "\n")
	l.part = lines[len(lines)-1]
	for _, line := range lines[:len(lines)-1] {
		if m := exitedLine.FindStringSubmatch(line); m != nil && strings.Contains(line, "[") {
			select {
			case <-l.exited:
			default:
				l.status = m[1]
				if l.status == "" {
					l.status = "exit status 0"
				}
				close(l.exited)
			}
		}
		l.tail = append(l.tail, redactLine(line))
		if len(l.tail) > tailLines {
			l.tail = l.tail[len(l.tail)-tailLines:]
		}
	}
	return len(p), nil
}

// secretish hides values that look like secrets should a plugin log them.
var secretish = regexp.MustCompile(`(?i)((?:password|secret|ticket|token_secret|PVEAuthCookie|CSRFPreventionToken)["']?\s*[=:]\s*["']?)[^\s"',}]+`)

func redactLine(line string) string {
	line = strings.ReplaceAll(line, tokenSecret, "<secret>")
	line = strings.ReplaceAll(line, userPassword, "<secret>")
	return secretish.ReplaceAllString(line, "${1}<secret>")
}

func (l *pluginLog) lastLines() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.tail...)
}

func (l *pluginLog) hasExited() (string, bool) {
	select {
	case <-l.exited:
		l.mu.Lock()
		defer l.mu.Unlock()
		return l.status, true
	default:
		return "", false
	}
}

func (l *pluginLog) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.file.Close()
}

// session is one plugin process driven by the real fleeting host.
type session struct {
	c        *contender
	scenario string
	runner   *fleeting.Runner
	group    provider.InstanceGroup
	log      *pluginLog
	pid      int
	logger   hclog.Logger
	// failure is set once the plugin exited or hung; every later call
	// returns it at once.
	mu      sync.Mutex
	failure error
	closed  bool
}

// errPluginGone wraps the failure of a plugin that exited or was killed.
var errPluginGone = errors.New("plugin failed")

func openSession(c *contender, sim *simulator, work, scenario string, p runParams) (*session, error) {
	config, err := c.settingsFor(sim, work, p)
	if err != nil {
		return nil, err
	}
	return startSession(c, config, work, scenario, connector)
}

// startSession starts the plugin with the given plugin_config, logging to
// work/plugin.log, and calls Init with the given connector settings
// (Runner's connector_config).
func startSession(c *contender, config []byte, work, scenario string, settings provider.Settings) (*session, error) {
	log, err := newPluginLog(filepath.Join(work, "plugin.log"))
	if err != nil {
		return nil, err
	}
	logger := hclog.New(&hclog.LoggerOptions{Level: hclog.Debug, Output: log})
	var runner *fleeting.Runner
	started := make(chan error, 1)
	go func() {
		var err error
		runner, err = fleeting.RunPlugin(c.Binary, config, fleeting.WithPluginLogger(logger))
		started <- err
	}()
	select {
	case err = <-started:
	case <-time.After(limits.Start + 30*time.Second):
		err = fmt.Errorf("no handshake within %s", limits.Start)
	}
	if err != nil {
		c.record(incident{Scenario: scenario, Kind: "exited", During: "start", Detail: err.Error(), LastLines: log.lastLines()})
		log.close()
		return nil, fmt.Errorf("could not start the plugin: %w", err)
	}
	s := &session{c: c, scenario: scenario, runner: runner, group: runner.InstanceGroup(), log: log, pid: childPID(c.Binary), logger: logger}
	err = s.do(context.Background(), "Init", limits.Init, func(ctx context.Context) error {
		_, err := s.group.Init(ctx, logger, settings)
		return err
	})
	if err != nil {
		s.close()
		return nil, fmt.Errorf("could not initialise the plugin: %w", err)
	}
	return s, nil
}

// gone reports whether the plugin failed (exited or hung) in this session.
func (s *session) gone() bool { return s.err() != nil }

// err is why the plugin is gone, or nil.
func (s *session) err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.failure
}

// do runs one call to the plugin with a deadline. When the call fails
// because the process exited, or does not return by its deadline while the
// process lives on (a hang: the process is killed), the incident is
// recorded and the session fails for good.
func (s *session) do(parent context.Context, what string, limit time.Duration, call func(ctx context.Context) error) error {
	if err := s.err(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(parent, limit)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- call(ctx) }()
	var err error
	hostStuck := false
	select {
	case err = <-done:
	case <-time.After(limit + 5*time.Second):
		// The host itself did not return after the deadline.
		err, hostStuck = context.DeadlineExceeded, true
	}
	if err == nil {
		return nil
	}
	if !alive(s.pid) {
		status, _ := s.waitExit(2 * time.Second)
		return s.fail(what, orText(status, "exited"), "")
	}
	if status, exited := s.log.hasExited(); exited {
		return s.fail(what, status, "")
	}
	ownDeadline := parent.Err() == nil && errors.Is(ctx.Err(), context.DeadlineExceeded)
	if ownDeadline || hostStuck {
		detail := fmt.Sprintf("%s did not return within %s", what, limit)
		s.kill()
		return s.fail(what, "hung", detail)
	}
	return err
}

// waitExit waits up to d for go-plugin to report the process's end.
func (s *session) waitExit(d time.Duration) (string, bool) {
	select {
	case <-s.log.exited:
	case <-time.After(d):
	}
	return s.log.hasExited()
}

func (s *session) fail(what, status, detail string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failure != nil {
		return s.failure // a concurrent call noticed it first
	}
	kind := "exited"
	lines := s.log.lastLines()
	for _, line := range lines {
		if strings.Contains(line, "panic: ") || strings.Contains(line, "panicked at") || strings.Contains(line, "fatal error: ") {
			kind = "panicked"
		}
	}
	if status == "hung" {
		kind, status = "hung", "killed"
		if st, ok := s.waitExit(time.Second); ok {
			status = "killed (" + st + ")"
		}
	}
	i := incident{Scenario: s.scenario, Kind: kind, During: what, Status: status, Detail: detail, LastLines: lines}
	s.c.record(i)
	s.failure = fmt.Errorf("%w: %s", errPluginGone, i)
	logf("  %s: plugin %s", s.c.Name, i)
	return s.failure
}

// kill ends the process as Runner does (go-plugin Kill: the controller's
// Shutdown, 2 s, SIGKILL), and sends SIGKILL itself should Kill not return.
func (s *session) kill() {
	done := make(chan struct{})
	go func() {
		s.runner.Kill()
		close(done)
	}()
	select {
	case <-done:
		return
	case <-time.After(limits.Kill):
	}
	if s.pid > 0 {
		syscall.Kill(s.pid, syscall.SIGKILL)
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		logf("  %s: go-plugin's Kill did not return after SIGKILL to %d; going on", s.c.Name, s.pid)
	}
}

// close ends the session: the fleeting Shutdown call, then go-plugin's
// Kill. A plugin that needed SIGKILL is recorded.
func (s *session) close() {
	if s.closed {
		return
	}
	s.closed = true
	if !s.gone() {
		s.do(context.Background(), "Shutdown", limits.Shutdown, func(ctx context.Context) error {
			return s.group.Shutdown(ctx)
		})
	}
	failed := s.gone()
	s.kill()
	if !failed {
		for _, line := range s.log.lastLines() {
			if strings.Contains(line, "plugin failed to exit gracefully") {
				s.c.record(incident{Scenario: s.scenario, Kind: "killed", During: "Kill",
					Detail: "did not exit within 2 s of the controller's Shutdown; go-plugin sent SIGKILL", LastLines: s.log.lastLines()})
				break
			}
		}
	}
	s.log.close()
}

// Calls with deadlines.

func (s *session) states(parent context.Context) (map[string]provider.State, error) {
	states := map[string]provider.State{}
	var mu sync.Mutex
	err := s.do(parent, "Update", limits.Update, func(ctx context.Context) error {
		return s.group.Update(ctx, func(id string, state provider.State) {
			mu.Lock()
			states[id] = state
			mu.Unlock()
		})
	})
	mu.Lock()
	defer mu.Unlock()
	return states, err
}

func (s *session) increase(parent context.Context, n int) (int, error) {
	return s.increaseWithin(parent, n, limits.Increase)
}

// increaseWithin is increase with a deadline of the caller's choosing: a
// growth that Runner would wait for (its provisioner gives Increase no
// deadline) passes a little more than what is left of its own budget, so
// that the budget ends first and an Increase still under way then is the
// scenario's failure, not a hang.
func (s *session) increaseWithin(parent context.Context, n int, limit time.Duration) (int, error) {
	var got int
	err := s.do(parent, "Increase", limit, func(ctx context.Context) error {
		var err error
		got, err = s.group.Increase(ctx, n)
		return err
	})
	return got, err
}

func (s *session) decrease(parent context.Context, ids []string) ([]string, error) {
	var removed []string
	err := s.do(parent, "Decrease", limits.Decrease, func(ctx context.Context) error {
		var err error
		removed, err = s.group.Decrease(ctx, ids)
		return err
	})
	return removed, err
}

func (s *session) connectInfo(parent context.Context, id string) (provider.ConnectInfo, error) {
	var info provider.ConnectInfo
	err := s.do(parent, "ConnectInfo", limits.ConnectInfo, func(ctx context.Context) error {
		var err error
		info, err = s.group.ConnectInfo(ctx, id)
		return err
	})
	return info, err
}

// fleeting's go-plugin handshake, as its internal/plugin package defines it.
var fleetingHandshake = plugin.HandshakeConfig{
	ProtocolVersion:  0,
	MagicCookieKey:   "FLEETING_INSTANCE_GROUP_PLUGIN",
	MagicCookieValue: "4c6410b1-cb78-4962-8c76-ab936d0ea908",
}

// rawPlugin dispenses the bare gRPC connection: the handshake measurement
// needs no fleeting client.
type rawPlugin struct{ plugin.NetRPCUnsupportedPlugin }

func (rawPlugin) GRPCServer(*plugin.GRPCBroker, *grpc.Server) error {
	return errors.New("host side only")
}

func (rawPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, conn *grpc.ClientConn) (interface{}, error) {
	return conn, nil
}

// handshakeMillis times exec → handshake with go-plugin's own client, as
// the fleeting host does, then ends the plugin as Runner does: go-plugin's
// Kill (the controller's Shutdown over gRPC, up to 2 s, then SIGKILL).
// go-plugin servers ignore SIGINT, so a signal alone would not end them.
// Each run is bounded; a plugin that needs SIGKILL is counted.
func handshakeMillis(binary string, runs int) (median float64, killed int, err error) {
	var samples []float64
	for i := 0; i < runs; i++ {
		var stderr strings.Builder
		client := plugin.NewClient(&plugin.ClientConfig{
			HandshakeConfig:  fleetingHandshake,
			VersionedPlugins: map[int]plugin.PluginSet{0: {"instancegroup": rawPlugin{}}},
			Cmd:              exec.Command(binary),
			AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
			StartTimeout:     limits.Start,
			Logger:           hclog.New(&hclog.LoggerOptions{Level: hclog.Warn, Output: &lockedWriter{w: &stderr}}),
		})
		started := time.Now()
		_, startErr := client.Start()
		elapsed := time.Since(started)
		pid := 0
		if rc := client.ReattachConfig(); rc != nil {
			pid = rc.Pid
		}
		done := make(chan struct{})
		go func() {
			client.Kill()
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(limits.Kill):
			if pid > 0 {
				syscall.Kill(pid, syscall.SIGKILL)
			}
			select {
			case <-done:
			case <-time.After(5 * time.Second):
			}
		}
		if strings.Contains(stderr.String(), "plugin failed to exit gracefully") {
			killed++
		}
		if startErr != nil {
			return 0, killed, fmt.Errorf("could not complete the handshake: %w", startErr)
		}
		samples = append(samples, float64(elapsed.Microseconds())/1000)
	}
	sort.Float64s(samples)
	return samples[len(samples)/2], killed, nil
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// alive reports whether a process runs (not gone, not a zombie).
func alive(pid int) bool {
	if pid <= 0 {
		return true // unknown: let the exit report decide
	}
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	text := string(raw)
	i := strings.LastIndexByte(text, ')')
	return i < 0 || i+2 >= len(text) || text[i+2] != 'Z'
}

func orText(s, fallback string) string {
	if s == "" {
		return fallback
	}
	return s
}
