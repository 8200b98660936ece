package main

import (
	"fmt"
	"strings"
	"testing"
)

// rendered is what a report section writes through its `w` function.
func rendered(render func(w func(string, ...any))) string {
	var out strings.Builder
	render(func(format string, args ...any) { fmt.Fprintf(&out, format, args...) })
	return out.String()
}

// requireAll fails the test for each of wants that text (the section
// named what) lacks.
func requireAll(t *testing.T, what, text string, wants ...string) {
	t.Helper()
	for _, want := range wants {
		if !strings.Contains(text, want) {
			t.Errorf("the %s lacks %q:\n%s", what, want, text)
		}
	}
}
