package main

import (
	"os"
	"path/filepath"
	"testing"
)

// The report names the commit our binary was built from, which a
// BENCH_PLUGIN release binary may not share with the checkout.
func TestOursIsNamedByTheCommitItsBinaryWasBuiltFrom(t *testing.T) {
	binary := filepath.Join(t.TempDir(), "plugin")
	script := "#!/bin/sh\nprintf 'Name:         fleeting-plugin-proxmox\\nVersion:      0.1.0\\nGit revision: 263ad6b6\\nGit ref:      main\\n'\n"
	if err := os.WriteFile(binary, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	if got := ours(binary).Version; got != "263ad6b6" {
		t.Errorf("ours built from %q, want the binary's 263ad6b6", got)
	}
	if got, want := builtFrom(filepath.Join(t.TempDir(), "missing")), gitDescribe(); got != want {
		t.Errorf("a binary that cannot say: %q, want the checkout's %q", got, want)
	}
	if got := revisionOf("Version: 0.1.0\n"); got != "" {
		t.Errorf("no revision line read as %q", got)
	}
}
