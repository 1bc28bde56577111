// Package prometheus holds nonqueue's Prometheus alerting rules
// (alerts.yml) and their tests; it has no Go code of its own. The package
// ships the rules under /usr/share/nonqueue/.
package prometheus

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/internal/testdb"
)

// alertNames are the alerts the runbook (docs/operations.md) has a section
// for; renaming one breaks the links of whoever routes on it.
var alertNames = []string{
	"NonqueueReplicaLagging", "NonqueueReplicaStopped", "NonqueueTopicsParked", "NonqueueBacklogNotShrinking",
	"NonqueueNoLiveInstances", "NonqueueFailureRateHigh", "NonqueuePublishErrors", "NonqueuePaused", "NonqueueThrottled",
	"NonqueueFollowerDelayHigh", "NonqueueNoActiveFollower", "NonqueueFollowerErrors",
}

// promtool finds promtool (testdb.Tool: skipped without it, failing under CI).
func promtool(t *testing.T) string { return testdb.Tool(t, "promtool", "prometheus") }

// runPromtool runs promtool with args in this directory and fails the test
// with its output when it exits non-zero.
func runPromtool(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, promtool(t), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestRulesCheck: promtool accepts alerts.yml (syntax, PromQL, templates)
// and finds exactly the alerts of alertNames.
func TestRulesCheck(t *testing.T) {
	out := runPromtool(t, "check", "rules", "alerts.yml")
	if want := fmt.Sprintf("SUCCESS: %d rules found", len(alertNames)); !strings.Contains(out, want) {
		t.Errorf("promtool check rules: want %q in\n%s", want, out)
	}
}

// TestRulesUnit: `promtool test rules alerts_test.yml` passes: every alert
// fires on its input series, with its labels and annotations, and clears.
func TestRulesUnit(t *testing.T) {
	out := runPromtool(t, "test", "rules", "alerts_test.yml")
	if !strings.Contains(out, "SUCCESS") {
		t.Errorf("promtool test rules: no SUCCESS in\n%s", out)
	}
}

// ruleBlocks splits alerts.yml into one text block per alert, by name.
func ruleBlocks(t *testing.T) map[string]string {
	t.Helper()
	b, err := os.ReadFile("alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	blocks := map[string]string{}
	var names []string
	parts := regexp.MustCompile(`(?m)^\s*- alert:\s*`).Split(string(b), -1)
	for _, p := range parts[1:] {
		name, rest, _ := strings.Cut(p, "\n")
		name = strings.TrimSpace(name)
		names = append(names, name)
		blocks[name] = rest
	}
	if !slices.Equal(slices.Sorted(slices.Values(names)), slices.Sorted(slices.Values(alertNames))) {
		t.Fatalf("alerts.yml has alerts %v, want exactly %v", names, alertNames)
	}
	return blocks
}

// headingAnchors returns the GitHub anchors of the headings in a markdown
// file: lower case, punctuation dropped, spaces to hyphens.
func headingAnchors(t *testing.T, path string) map[string]bool {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	drop := regexp.MustCompile(`[^a-z0-9 _-]`)
	anchors := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^#+\s+(.+?)\s*$`).FindAllStringSubmatch(string(b), -1) {
		anchors[strings.ReplaceAll(drop.ReplaceAllString(strings.ToLower(m[1]), ""), " ", "-")] = true
	}
	return anchors
}

// TestRulesFields: each alert has a for, a severity (critical or warning),
// a summary, a description, and a runbook_url that points at the section
// of docs/operations.md named after it, which must exist.
func TestRulesFields(t *testing.T) {
	anchors := headingAnchors(t, "../../docs/operations.md")
	field := func(block, key string) string {
		m := regexp.MustCompile(`(?m)^\s*` + key + `:\s*(.+)$`).FindStringSubmatch(block)
		if m == nil {
			return ""
		}
		return strings.Trim(strings.TrimSpace(m[1]), `"`)
	}
	for name, block := range ruleBlocks(t) {
		if field(block, "for") == "" {
			t.Errorf("%s: no for", name)
		}
		if s := field(block, "severity"); s != "critical" && s != "warning" {
			t.Errorf("%s: severity %q, want critical or warning", name, s)
		}
		for _, k := range []string{"summary", "description"} {
			if field(block, k) == "" {
				t.Errorf("%s: no %s annotation", name, k)
			}
		}
		url := field(block, "runbook_url")
		anchor := strings.ToLower(name)
		if !strings.HasSuffix(url, "docs/operations.md#"+anchor) {
			t.Errorf("%s: runbook_url %q, want one ending in docs/operations.md#%s", name, url, anchor)
		}
		if !anchors[anchor] {
			t.Errorf("%s: docs/operations.md has no heading with anchor #%s", name, anchor)
		}
	}
}

// TestRulesUnitCoverage: alerts_test.yml shows every alert both firing
// (exp_alerts with an entry) and not firing (exp_alerts: []), so no alert
// goes untested when one is added.
func TestRulesUnitCoverage(t *testing.T) {
	b, err := os.ReadFile("alerts_test.yml")
	if err != nil {
		t.Fatal(err)
	}
	fires, clears := map[string]bool{}, map[string]bool{}
	for _, c := range regexp.MustCompile(`(?m)^\s*- eval_time:`).Split(string(b), -1)[1:] {
		m := regexp.MustCompile(`(?m)^\s*alertname:\s*(\S+)`).FindStringSubmatch(c)
		if m == nil {
			t.Fatalf("an alert_rule_test without alertname:\n%s", c)
		}
		switch {
		case regexp.MustCompile(`exp_alerts:\s*\[\]`).MatchString(c):
			clears[m[1]] = true
		case strings.Contains(c, "exp_labels:"):
			fires[m[1]] = true
		}
	}
	for _, name := range alertNames {
		if !fires[name] {
			t.Errorf("alerts_test.yml never shows %s firing", name)
		}
		if !clears[name] {
			t.Errorf("alerts_test.yml never shows %s not firing", name)
		}
	}
}
