// Command misbehave is a fleeting plugin for the harness's own tests: an
// in-memory instance group that, depending on how it was built
// (-ldflags -X main.mode=...), behaves, panics mid-run, or hangs.
//
//	good      Increase adds running instances at 127.0.0.1; Decrease removes them.
//	panic     Init, Increase and Update work until instances were asked
//	          for; the next Update dereferences a nil pointer (exit status 2).
//	stubborn  Ignores SIGINT and SIGTERM, keeps running after the
//	          controller's Shutdown, and never returns from Update (it
//	          ignores the call's context too), so only SIGKILL ends it.
package main

import (
	"context"
	"fmt"
	"os/signal"
	"sync"
	"syscall"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	"gitlab.com/gitlab-org/fleeting/fleeting/plugin"
	"gitlab.com/gitlab-org/fleeting/fleeting/provider"
)

var mode = "good"

type group struct {
	mu        sync.Mutex
	next      int
	instances map[string]bool
	log       hclog.Logger
}

func (g *group) Init(_ context.Context, logger hclog.Logger, _ provider.Settings) (provider.ProviderInfo, error) {
	g.log = logger
	g.instances = map[string]bool{}
	g.log.Info("misbehave plugin ready", "mode", mode)
	return provider.ProviderInfo{ID: "misbehave", MaxSize: 1000}, nil
}

func (g *group) Update(_ context.Context, fn func(string, provider.State)) error {
	if mode == "stubborn" {
		g.log.Info("Update: never returning")
		sleepForever()
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if mode == "panic" && len(g.instances) > 0 {
		g.log.Info("Update: about to dereference a nil pointer")
		var instance *struct{ address string }
		fmt.Println(instance.address)
	}
	for id := range g.instances {
		fn(id, provider.StateRunning)
	}
	return nil
}

func (g *group) Increase(_ context.Context, n int) (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for i := 0; i < n; i++ {
		g.next++
		g.instances[fmt.Sprint(g.next)] = true
	}
	return n, nil
}

func (g *group) Decrease(_ context.Context, ids []string) ([]string, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, id := range ids {
		delete(g.instances, id)
	}
	return ids, nil
}

func (g *group) ConnectInfo(_ context.Context, id string) (provider.ConnectInfo, error) {
	return provider.ConnectInfo{ID: id, InternalAddr: "127.0.0.1"}, nil
}

func (g *group) Heartbeat(context.Context, string) error { return nil }

func (g *group) Suspend(context.Context, []string) ([]string, error) { return nil, nil }

func (g *group) Resume(context.Context, []string) ([]string, error) { return nil, nil }

func (g *group) Shutdown(context.Context) error { return nil }

func main() {
	if mode == "stubborn" {
		signal.Ignore(syscall.SIGINT, syscall.SIGTERM)
	}
	plugin.Serve(&group{})
	if mode == "stubborn" {
		sleepForever() // outlive the controller's Shutdown
	}
}

// sleepForever blocks without tripping Go's deadlock detector.
func sleepForever() {
	for {
		time.Sleep(time.Hour)
	}
}
