package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// runParams are what a benchmark asks of a plugin's configuration.
type runParams struct {
	maxInstances int
	fullClone    bool
	cloneLimit   int
}

// contender is one fleeting plugin under test.
type contender struct {
	Name    string `json:"name"`
	Module  string `json:"module,omitempty"`  // Go module path
	Package string `json:"package,omitempty"` // main package inside the module
	Version string `json:"version"`
	Binary  string `json:"binary,omitempty"`
	// BuildError is why it could not be built (exact text); empty when it built.
	BuildError string `json:"build_error,omitempty"`
	// configure writes the plugin's config (and credentials file) for a run.
	configure func(sim *simulator, work string, p runParams) ([]byte, error) `json:"-"`
}

// Every public Proxmox fleeting plugin we know of (docs in
// /work/shared/docs/anchors.md §0): the LukasK32 lineage shares one config
// format (ticket login from a JSON credentials file, TLS verification only
// switchable off); the nE0sIghT lineage uses an API token in the config.
func competitors() []*contender {
	lineageLK := func(name, module string) *contender {
		return &contender{Name: name, Module: module, Package: "cmd/fleeting-plugin-proxmox", configure: configureLukasK32}
	}
	return []*contender{
		lineageLK("lukask32 (seed)", "github.com/lukask32/fleeting-plugin-proxmox"),
		lineageLK("Phenix66", "github.com/Phenix66/fleeting-plugin-proxmox"),
		lineageLK("yoonda9", "github.com/yoonda9/fleeting-plugin-proxmox"),
		lineageLK("Leseratte10", "github.com/Leseratte10/fleeting-plugin-proxmox"),
		lineageLK("dxas90", "github.com/dxas90/gitlab-fleeting-plugin-proxmox"),
		lineageLK("LeCyreaxYT", "github.com/LeCyreaxYT/gitlab-fleeting-plugin-proxmox"),
		{Name: "nE0sIghT", Module: "gitlab.com/gitlab-org/fleeting/plugins/proxmox", Package: "cmd/fleeting-plugin-proxmox", configure: configureNE0sIghT},
		{Name: "overlordtm", Module: "github.com/overlordtm/fleeting-plugin-proxmox", Package: "cmd/fleeting-plugin-proxmox", configure: configureNE0sIghT},
	}
}

func ours(binary string) *contender {
	return &contender{Name: "ours (Rust)", Binary: binary, Version: gitDescribe(), configure: configureOurs}
}

func configureOurs(sim *simulator, work string, p runParams) ([]byte, error) {
	credentials := filepath.Join(work, "pve-token.json")
	raw, _ := json.Marshal(map[string]string{"token_id": tokenID, "token_secret": tokenSecret})
	if err := os.WriteFile(credentials, raw, 0o600); err != nil {
		return nil, err
	}
	mode := "linked"
	if p.fullClone {
		mode = "full"
	}
	return json.Marshal(map[string]any{
		"url": sim.URL, "tls_fingerprint": sim.Fingerprint, "credentials_file_path": credentials,
		"pool": poolName, "template_id": templateID, "max_instances": p.maxInstances, "group": "bench",
		"clone_mode": mode, "max_parallel_clones": p.cloneLimit, "max_parallel_deletes": p.cloneLimit,
	})
}

// The LukasK32 lineage: user/password from a credentials file; a linked
// clone when `storage` is empty, a full clone onto `storage` otherwise.
func configureLukasK32(sim *simulator, work string, p runParams) ([]byte, error) {
	credentials := filepath.Join(work, "pve-password.json")
	raw, _ := json.Marshal(map[string]string{"realm": userRealm, "username": userName, "password": userPassword})
	if err := os.WriteFile(credentials, raw, 0o600); err != nil {
		return nil, err
	}
	config := map[string]any{
		"url": sim.URL + "/api2/json", "insecure_skip_tls_verify": true, "credentials_file_path": credentials,
		"pool": poolName, "template_id": templateID, "max_instances": p.maxInstances,
	}
	if p.fullClone {
		config["storage"] = "local-lvm"
	}
	return json.Marshal(config)
}

// The nE0sIghT lineage: an API token in the plugin config and a mandatory
// VMID range.
func configureNE0sIghT(sim *simulator, work string, p runParams) ([]byte, error) {
	parts := strings.SplitN(tokenID, "!", 2)
	mode := "linked"
	if p.fullClone {
		mode = "full"
	}
	return json.Marshal(map[string]any{
		"url": sim.URL, "token_id": parts[0] + "!" + parts[1], "token_secret": tokenSecret, "tls_insecure_skip_verify": true,
		"pool": poolName, "template_id": templateID, "max_instances": p.maxInstances, "vmid_range": "1000-9999",
		"clone_mode": mode, "max_parallel_clones": p.cloneLimit, "nodes": []string{"pve1"},
	})
}

// build installs a competitor's latest tag from the Go module proxy into
// dir, or builds it from a local checkout named by -source NAME=DIR.
func (c *contender) build(dir, source string) {
	bin := filepath.Join(dir, strings.NewReplacer(" ", "-", "(", "", ")", "").Replace(c.Name))
	if err := os.MkdirAll(bin, 0o755); err != nil {
		c.BuildError = err.Error()
		return
	}
	var cmd *exec.Cmd
	if source != "" {
		c.Version = "checkout " + gitDescribeIn(source)
		cmd = exec.Command("go", "build", "-o", bin, "./"+c.Package)
		cmd.Dir = source
	} else {
		version, err := latestVersion(c.Module)
		if err != nil {
			c.BuildError = err.Error()
			return
		}
		c.Version = version
		cmd = exec.Command("go", "install", c.Module+"/"+c.Package+"@"+version)
		cmd.Env = append(os.Environ(), "GOBIN="+bin)
	}
	// A checkout may lack go.sum entries; `go install m@v` takes no -mod.
	goflags := "GOFLAGS="
	if source != "" {
		goflags = "GOFLAGS=-mod=mod"
	}
	cmd.Env = append(cmdEnv(cmd), goflags, "GONOSUMDB=gitlab.com/gitlab-org/fleeting")
	if out, err := cmd.CombinedOutput(); err != nil {
		c.BuildError = fmt.Sprintf("%s: %s", strings.Join(cmd.Args, " "), strings.TrimSpace(string(out)))
		return
	}
	entries, _ := os.ReadDir(bin)
	for _, entry := range entries {
		c.Binary = filepath.Join(bin, entry.Name())
		if source != "" {
			break
		}
	}
	if c.Binary == "" {
		c.BuildError = "the build produced no binary in " + bin
	}
}

func cmdEnv(cmd *exec.Cmd) []string {
	if cmd.Env != nil {
		return cmd.Env
	}
	return os.Environ()
}

// latestVersion asks the Go module proxy for the newest tag (or
// pseudo-version of the default branch when there is no tag).
func latestVersion(module string) (string, error) {
	cmd := exec.Command("go", "list", "-m", "-json", module+"@latest")
	cmd.Dir = os.TempDir()
	cmd.Env = append(os.Environ(), "GOFLAGS=", "GO111MODULE=on")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go list -m %s@latest: %s", module, strings.TrimSpace(string(out)))
	}
	var info struct{ Version string }
	if err := json.Unmarshal(out, &info); err != nil {
		return "", fmt.Errorf("go list -m %s@latest: %v", module, err)
	}
	return info.Version, nil
}
