// Package goclient cross-checks the Proxmox VE simulator with a client we
// did not write: github.com/luthermonson/go-proxmox logs in, lists
// resources, clones, starts, reads the guest agent's interfaces and deletes
// against a running pve-sim. run.sh starts the simulator and passes its
// address, certificate fingerprint and credentials in the environment.
package goclient

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	proxmox "github.com/luthermonson/go-proxmox"
)

type simulator struct {
	url, fingerprint, user, password, tokenID, tokenSecret string
}

func simulatorFromEnv(t *testing.T) simulator {
	t.Helper()
	get := func(name string) string {
		value := os.Getenv(name)
		if value == "" {
			t.Fatalf("%s is not set: run tests/go-client/run.sh, which starts pve-sim and sets it", name)
		}
		return value
	}
	return simulator{
		url:         get("PVE_SIM_URL") + "/api2/json",
		fingerprint: get("PVE_SIM_FINGERPRINT"),
		user:        get("PVE_SIM_USER"),
		password:    get("PVE_SIM_PASSWORD"),
		tokenID:     get("PVE_SIM_TOKEN_ID"),
		tokenSecret: get("PVE_SIM_TOKEN_SECRET"),
	}
}

// pinnedHTTPClient trusts exactly the certificate with the SHA-256
// fingerprint pve-sim printed (AB:CD:… notation), as PVE users pin theirs.
func pinnedHTTPClient(fingerprint string) *http.Client {
	want := strings.ToLower(strings.ReplaceAll(fingerprint, ":", ""))
	return &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig: &tls.Config{
				InsecureSkipVerify: true, // replaced by the pin below
				VerifyPeerCertificate: func(rawCerts [][]byte, _ [][]*x509.Certificate) error {
					if len(rawCerts) == 0 {
						return fmt.Errorf("no server certificate")
					}
					sum := sha256.Sum256(rawCerts[0])
					if got := hex.EncodeToString(sum[:]); got != want {
						return fmt.Errorf("server certificate fingerprint %s does not match %s", got, want)
					}
					return nil
				},
			},
		},
	}
}

func waitOK(t *testing.T, ctx context.Context, task *proxmox.Task, what string) {
	t.Helper()
	if task == nil {
		t.Fatalf("%s: no task", what)
	}
	if err := task.Wait(ctx, 100*time.Millisecond, time.Minute); err != nil {
		t.Fatalf("%s: waiting for %s: %v", what, task.UPID, err)
	}
	if !task.IsSuccessful {
		t.Fatalf("%s: task %s ended with %q", what, task.UPID, task.ExitStatus)
	}
}

func TestLifecycleAgainstTheSimulator(t *testing.T) {
	sim := simulatorFromEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	proxmox.DefaultWaitInterval = 100 * time.Millisecond

	// Log in with a password: a ticket, then the CSRF token on writes.
	client := proxmox.NewClient(sim.url,
		proxmox.WithHTTPClient(pinnedHTTPClient(sim.fingerprint)),
		proxmox.WithCredentials(&proxmox.Credentials{Username: sim.user, Password: sim.password}))
	if err := client.Login(ctx, sim.user, sim.password); err != nil {
		t.Fatalf("login: %v", err)
	}
	if session := client.Session(); session == nil || !strings.HasPrefix(session.Ticket, "PVE:"+sim.user+":") {
		t.Fatalf("login gave no ticket: %+v", session)
	}
	version, err := client.Version(ctx)
	if err != nil || version.Release != "9.1" {
		t.Fatalf("version: %+v, %v", version, err)
	}

	cluster, err := client.Cluster(ctx)
	if err != nil {
		t.Fatalf("cluster status: %v", err)
	}
	resources, err := cluster.Resources(ctx, "vm")
	if err != nil {
		t.Fatalf("resources: %v", err)
	}
	var template *proxmox.ClusterResource
	for _, resource := range resources {
		if resource.VMID == 9000 {
			template = resource
		}
	}
	if template == nil || template.Template != 1 || template.Pool != "ci" || template.Node != "pve1" {
		t.Fatalf("the template is not listed as one: %+v", template)
	}

	node, err := client.Node(ctx, "pve1")
	if err != nil {
		t.Fatalf("node: %v", err)
	}
	source, err := node.VirtualMachine(ctx, 9000)
	if err != nil {
		t.Fatalf("template: %v", err)
	}
	if !bool(source.Template) || source.VirtualMachineConfig.Agent != "enabled=1" {
		t.Fatalf("template status/config: %+v %+v", source, source.VirtualMachineConfig)
	}

	// Clone into the pool; go-proxmox asks /cluster/nextid for the id.
	newID, task, err := source.Clone(ctx, &proxmox.VirtualMachineCloneOptions{Name: "go-client", Pool: "ci"})
	if err != nil {
		t.Fatalf("clone: %v", err)
	}
	waitOK(t, ctx, task, "clone")
	if task.Type != "qmclone" || task.ID != "9000" || task.Node != "pve1" {
		t.Fatalf("clone task: %+v", task)
	}

	// The same VMID again: PVE's error text reaches Go in the status line.
	_, _, err = source.Clone(ctx, &proxmox.VirtualMachineCloneOptions{NewID: newID, Pool: "ci"})
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("unable to create VM %d: config file already exists", newID)) {
		t.Fatalf("a clone onto a taken VMID: %v", err)
	}

	// The rest with the API token, as an autoscaler would.
	tokenClient := proxmox.NewClient(sim.url,
		proxmox.WithHTTPClient(pinnedHTTPClient(sim.fingerprint)),
		proxmox.WithAPIToken(sim.tokenID, sim.tokenSecret))
	tokenNode, err := tokenClient.Node(ctx, "pve1")
	if err != nil {
		t.Fatalf("node with the token: %v", err)
	}
	vm, err := tokenNode.VirtualMachine(ctx, newID)
	if err != nil {
		t.Fatalf("new VM: %v", err)
	}
	if vm.Name != "go-client" || vm.Lock != "" || bool(vm.Template) {
		t.Fatalf("new VM status: %+v", vm)
	}
	mac := ""
	if net0 := vm.VirtualMachineConfig.Nets["net0"]; strings.HasPrefix(net0, "virtio=") {
		mac = strings.ToLower(strings.SplitN(strings.TrimPrefix(net0, "virtio="), ",", 2)[0])
	}
	if mac == "" {
		t.Fatalf("net0 has no MAC: %q", vm.VirtualMachineConfig.Nets)
	}

	start, err := vm.Start(ctx)
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	waitOK(t, ctx, start, "start")
	if err := vm.WaitForAgent(ctx, 60); err != nil {
		t.Fatalf("agent: %v", err)
	}
	interfaces, err := vm.AgentGetNetworkIFaces(ctx)
	if err != nil {
		t.Fatalf("agent interfaces: %v", err)
	}
	_, subnet, _ := net.ParseCIDR("10.10.10.0/24")
	found := false
	for _, iface := range interfaces {
		if iface.HardwareAddress != mac {
			continue
		}
		for _, address := range iface.IPAddresses {
			if address.IPAddressType == "ipv4" && subnet.Contains(net.ParseIP(address.IPAddress)) && address.Prefix == 24 {
				found = true
			}
		}
	}
	if !found {
		t.Fatalf("no interface with MAC %s and an address in %s: %+v", mac, subnet, interfaces)
	}

	// A running VM cannot be deleted; stop it first.
	if _, err := vm.Delete(ctx, nil); err == nil || !strings.Contains(err.Error(), "is running - destroy failed") {
		t.Fatalf("deleting a running VM: %v", err)
	}
	stop, err := vm.Stop(ctx)
	if err != nil {
		t.Fatalf("stop: %v", err)
	}
	waitOK(t, ctx, stop, "stop")
	destroy, err := vm.Delete(ctx, &proxmox.VirtualMachineDeleteOptions{Purge: true, DestroyUnreferencedDisks: true})
	if err != nil {
		t.Fatalf("delete: %v", err)
	}
	waitOK(t, ctx, destroy, "delete")
	if _, err := tokenNode.VirtualMachine(ctx, newID); err == nil {
		t.Fatalf("VM %d still exists after delete", newID)
	}
}
