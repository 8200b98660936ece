package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
)

// runParams are what a benchmark asks of a plugin's configuration.
type runParams struct {
	maxInstances int
	fullClone    bool
	cloneLimit   int
	// layout is the cluster's nodes and storage (multinode.go); the zero
	// value is the usual one: template and instances on pve1's local-lvm.
	layout layout
}

// label names the settings a run gets, for the report.
func (p runParams) label() string {
	label := "linked clones"
	if p.fullClone {
		label = "full clones"
	}
	if p.layout.Key != "" {
		label += ", " + p.layout.title()
	}
	return label
}

// contender is one fleeting plugin under test: ours, or a competitor's
// prebuilt binary given with -competitor.
type contender struct {
	Key  string `json:"key"`
	Name string `json:"name"`
	// Repository and Commit are what the binary was built from, as the
	// person running the benchmark stated them (-competitor ...,repo=,commit=).
	Repository string `json:"repository,omitempty"`
	Commit     string `json:"commit,omitempty"`
	// Version is ours only: the commit our binary was built from.
	Version string `json:"version,omitempty"`
	Binary  string `json:"binary,omitempty"`
	// Style names the configuration format the contender is given.
	Style string `json:"config_style"`
	// Settings are the plugin configs it was given, by label (linked or
	// full clones), with secrets replaced; credentials files are inlined.
	Settings map[string]json.RawMessage `json:"settings,omitempty"`
	// Incidents are the times the plugin process exited, panicked or hung.
	Incidents []incident `json:"incidents,omitempty"`
	// Operations are the PVE operations it used in the scale and fault
	// runs, by operationId (operations.go).
	Operations map[string]*operationUse `json:"operations,omitempty"`
	// configure writes the plugin's config (and credentials file) for a run.
	configure func(sim *simulator, work string, p runParams) ([]byte, error)
	// scrapeURL, when set, is the plugin's /metrics, scraped during the
	// measured Updates as Prometheus would.
	scrapeURL string
	mu        sync.Mutex
}

// knownCompetitor is a public Proxmox fleeting plugin the harness knows how
// to configure (/work/shared/docs/anchors.md §0).
type knownCompetitor struct {
	key, name, repository, style string
	aliases                      []string
}

const (
	styleOurs     = "ours"
	styleLukasK32 = "lukask32"
	styleNE0sIghT = "ne0sight"
)

// The LukasK32 lineage shares one config format (ticket login from a JSON
// credentials file, TLS verification only switchable off); the nE0sIghT
// lineage uses an API token in the plugin config.
var knownCompetitors = []knownCompetitor{
	{key: "seed", name: "seed (LukasK32)", repository: "github.com/LukasK32/fleeting-plugin-proxmox", style: styleLukasK32, aliases: []string{"lukask32"}},
	{key: "phenix66", name: "Phenix66", repository: "github.com/Phenix66/fleeting-plugin-proxmox", style: styleLukasK32},
	{key: "yoonda9", name: "yoonda9", repository: "github.com/yoonda9/fleeting-plugin-proxmox", style: styleLukasK32},
	{key: "leseratte10", name: "Leseratte10", repository: "github.com/Leseratte10/fleeting-plugin-proxmox", style: styleLukasK32},
	{key: "dxas90", name: "dxas90", repository: "github.com/dxas90/gitlab-fleeting-plugin-proxmox", style: styleLukasK32},
	{key: "lecyreaxyt", name: "LeCyreaxYT", repository: "github.com/LeCyreaxYT/gitlab-fleeting-plugin-proxmox", style: styleLukasK32},
	{key: "ne0sight", name: "nE0sIghT", repository: "github.com/nE0sIghT/fleeting-plugin-proxmox", style: styleNE0sIghT},
	{key: "overlordtm", name: "overlordtm", repository: "github.com/overlordtm/fleeting-plugin-proxmox", style: styleNE0sIghT},
}

func findKnown(name string) (knownCompetitor, bool) {
	name = strings.ToLower(strings.TrimSpace(name))
	for _, k := range knownCompetitors {
		if k.key == name {
			return k, true
		}
		for _, alias := range k.aliases {
			if alias == name {
				return k, true
			}
		}
	}
	return knownCompetitor{}, false
}

func knownKeys() string {
	keys := make([]string, 0, len(knownCompetitors))
	for _, k := range knownCompetitors {
		keys = append(keys, k.key)
	}
	return strings.Join(keys, ", ")
}

// competitorFlags collects -competitor NAME=BINARY[,repo=R][,commit=C].
type competitorFlags []*contender

func (f *competitorFlags) String() string {
	parts := make([]string, 0, len(*f))
	for _, c := range *f {
		parts = append(parts, c.Key+"="+c.Binary)
	}
	return strings.Join(parts, " ")
}

func (f *competitorFlags) Set(value string) error {
	c, err := parseCompetitor(value)
	if err != nil {
		return err
	}
	for _, other := range *f {
		if other.Key == c.Key {
			return fmt.Errorf("could not take -competitor %q: %s is given twice", value, c.Key)
		}
	}
	*f = append(*f, c)
	return nil
}

// parseCompetitor reads NAME=BINARY[,repo=REPOSITORY][,commit=COMMIT].
func parseCompetitor(value string) (*contender, error) {
	fields := strings.Split(value, ",")
	name, binary, ok := strings.Cut(fields[0], "=")
	if !ok || strings.TrimSpace(binary) == "" {
		return nil, fmt.Errorf("could not read -competitor %q: it takes NAME=BINARY[,repo=REPOSITORY][,commit=COMMIT]", value)
	}
	known, ok := findKnown(name)
	if !ok {
		return nil, fmt.Errorf("could not read -competitor %q: unknown competitor %q (known: %s)", value, name, knownKeys())
	}
	abs, err := filepath.Abs(binary)
	if err != nil {
		return nil, fmt.Errorf("could not read -competitor %q: %w", value, err)
	}
	if info, err := os.Stat(abs); err != nil {
		return nil, fmt.Errorf("could not read -competitor %q: %w", value, err)
	} else if info.IsDir() || info.Mode()&0o111 == 0 {
		return nil, fmt.Errorf("could not read -competitor %q: %s is not an executable file", value, abs)
	}
	c := &contender{Key: known.key, Name: known.name, Repository: known.repository, Binary: abs, Style: known.style}
	for _, field := range fields[1:] {
		key, val, ok := strings.Cut(field, "=")
		val = strings.TrimSpace(val)
		switch {
		case ok && key == "repo" && val != "":
			c.Repository = strings.TrimPrefix(strings.TrimPrefix(val, "https://"), "http://")
		case ok && key == "commit" && val != "":
			c.Commit = val
		default:
			return nil, fmt.Errorf("could not read -competitor %q: unknown part %q (repo=... or commit=...)", value, field)
		}
	}
	switch c.Style {
	case styleLukasK32:
		c.configure = configureLukasK32
	case styleNE0sIghT:
		c.configure = configureNE0sIghT
	}
	return c, nil
}

// notGiven lists the known competitors that have no binary in this run.
func notGiven(given []*contender) []string {
	have := map[string]bool{}
	for _, c := range given {
		have[c.Key] = true
	}
	var out []string
	for _, k := range knownCompetitors {
		if !have[k.key] {
			out = append(out, k.name)
		}
	}
	sort.Strings(out)
	return out
}

func ours(binary string) *contender {
	return &contender{Key: "ours", Name: "ours (Rust)", Binary: binary, Version: builtFrom(binary), Style: styleOurs, configure: configureOurs}
}

// multiNode reports whether the contender can be given several nodes: ours
// (target_nodes) and the nE0sIghT lineage (nodes, with staged templates for
// nodes on local storage). The LukasK32 lineage has no node setting; it
// clones onto the template's node.
func (c *contender) multiNode() bool { return c.Style == styleOurs || c.Style == styleNE0sIghT }

// settingsFor writes a contender's config for one run and records it
// (secrets replaced) for the report.
func (c *contender) settingsFor(sim *simulator, work string, p runParams) ([]byte, error) {
	config, err := c.configure(sim, work, p)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.Settings == nil {
		c.Settings = map[string]json.RawMessage{}
	}
	if _, seen := c.Settings[p.label()]; !seen {
		c.Settings[p.label()] = redactedSettings(config)
	}
	return config, nil
}

// redactedSettings replaces secrets, replaces the run's own paths and ports
// by placeholders and inlines a credentials file (its password replaced).
func redactedSettings(config []byte) json.RawMessage {
	var settings map[string]any
	if err := json.Unmarshal(config, &settings); err != nil {
		return json.RawMessage(`"unreadable"`)
	}
	for key, value := range settings {
		switch key {
		case "token_secret", "password":
			settings[key] = "<secret>"
		case "url", "api_url":
			settings[key] = "<simulator URL>"
		case "tls_fingerprint":
			settings[key] = "<SHA-256 of the simulator's certificate>"
		case "tls_ca_file":
			settings[key] = "<the simulator's CA file>"
		case "credentials_file_path":
			path, _ := value.(string)
			var inner map[string]any
			if raw, err := os.ReadFile(path); err == nil && json.Unmarshal(raw, &inner) == nil {
				for k := range inner {
					if k == "password" || k == "token_secret" {
						inner[k] = "<secret>"
					}
				}
				settings[key] = map[string]any{"<file>": filepath.Base(path), "<contents>": inner}
			}
		}
	}
	var out bytes.Buffer
	encoder := json.NewEncoder(&out)
	encoder.SetEscapeHTML(false)
	encoder.Encode(settings)
	return bytes.TrimSpace(out.Bytes())
}

// oursWithMetrics is our plugin with metrics_listen on a free loopback port.
func oursWithMetrics(binary string) (*contender, error) {
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("could not find a free loopback port for metrics_listen: %w", err)
	}
	address := listener.Addr().String()
	listener.Close()
	c := ours(binary)
	c.Name = "ours (Rust), metrics on"
	c.scrapeURL = "http://" + address + "/metrics"
	c.configure = func(sim *simulator, work string, p runParams) ([]byte, error) {
		raw, err := configureOurs(sim, work, p)
		if err != nil {
			return nil, err
		}
		var settings map[string]any
		if err := json.Unmarshal(raw, &settings); err != nil {
			return nil, err
		}
		settings["metrics_listen"] = address
		return json.Marshal(settings)
	}
	return c, nil
}

func configureOurs(sim *simulator, work string, p runParams) ([]byte, error) {
	credentials := filepath.Join(work, "pve-token.json")
	raw, _ := json.Marshal(map[string]string{"token_id": tokenID, "token_secret": tokenSecret})
	if err := os.WriteFile(credentials, raw, 0o600); err != nil {
		return nil, fmt.Errorf("could not write %s: %w", credentials, err)
	}
	mode := "linked"
	if p.fullClone {
		mode = "full"
	}
	config := map[string]any{
		"url": sim.URL, "tls_fingerprint": sim.Fingerprint, "credentials_file_path": credentials,
		"pool": poolName, "template_id": templateID, "max_instances": p.maxInstances, "group": "bench",
		"clone_mode": mode, "max_parallel_clones": p.cloneLimit, "max_parallel_deletes": p.cloneLimit,
	}
	// Several nodes: every node in target_nodes; on local storage the
	// template copies are made with the defaults (template_stage_mode auto,
	// copies on the template's storage id, VMIDs from the cluster).
	if p.layout.multi() {
		config["target_nodes"] = p.layout.nodes()
	}
	return json.Marshal(config)
}

// The LukasK32 lineage (README "Plugin settings"): user/password from a
// credentials file; `url` is the bare base URL (the plugin appends
// /api2/json itself); a linked clone when `storage` is empty, a full clone
// onto `storage` otherwise. Its only TLS option is to skip verification.
// `instance_network_interface` keeps its default ens18 (the simulated
// guest agent reports ens18).
func configureLukasK32(sim *simulator, work string, p runParams) ([]byte, error) {
	credentials := filepath.Join(work, "pve-password.json")
	raw, _ := json.Marshal(map[string]string{"realm": userRealm, "username": userName, "password": userPassword})
	if err := os.WriteFile(credentials, raw, 0o600); err != nil {
		return nil, fmt.Errorf("could not write %s: %w", credentials, err)
	}
	config := map[string]any{
		"url": sim.URL, "insecure_skip_tls_verify": true, "credentials_file_path": credentials,
		"pool": poolName, "template_id": templateID, "max_instances": p.maxInstances,
	}
	if p.fullClone {
		config["storage"] = p.layout.storage()
	}
	return json.Marshal(config)
}

// The nE0sIghT lineage (its README "Plugin configuration reference" and
// config.go): an API token in the plugin config, the CA file to verify
// the API, a dedicated name prefix and VMID range, a node allowlist, the
// template list; DHCP networking (the template's ipconfig0 is ip=dhcp, so
// the guest agent must report the address); no staged templates (the
// template is on the only allowed node); the clone and delete limits of the
// scenario, the other limits and timeouts at their documented defaults.
// Several nodes: all of them in `nodes`, and staged templates
// (`template_stage_mode = "auto"`, which needs a `template_vmid_range`
// apart from `vmid_range`) for the nodes that cannot clone the template.
func configureNE0sIghT(sim *simulator, work string, p runParams) ([]byte, error) {
	mode := "linked"
	if p.fullClone {
		mode = "full"
	}
	config := map[string]any{
		"api_url": sim.URL, "token_id": tokenID, "token_secret": tokenSecret,
		"pool": poolName, "template_vmids": []int{templateID}, "template_stage_mode": "off",
		"name_prefix": "bench", "vmid_range": "1000-8999", "nodes": p.layout.nodes(),
		"clone_mode": mode, "target_storages": []string{p.layout.storage()},
		"network_mode": "dhcp", "agent_required": true,
		"max_parallel_clones": p.cloneLimit, "max_parallel_deletes": p.cloneLimit,
	}
	if p.layout.multi() {
		config["template_stage_mode"] = "auto"
		config["template_vmid_range"] = ne0sightTemplateRange
	}
	if sim.CAFile != "" {
		config["tls_ca_file"] = sim.CAFile
	} else {
		config["tls_insecure_skip_verify"] = true
	}
	return json.Marshal(config)
}
