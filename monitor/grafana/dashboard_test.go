// Package grafana holds nonqueue's Grafana dashboard (nonqueue.json) and its
// tests; it has no Go code of its own. The package ships the dashboard
// under /usr/share/nonqueue/. That every metric it names is one nonqueue
// exports is checked against real processes in cmd/nonqueue
// (TestMonitoringMetricNames).
package grafana

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/internal/testdb"
)

// datasource is the reference every panel and query must use: the
// dashboard's Prometheus datasource variable, so it imports into any
// Grafana whatever its datasource is called.
const datasource = "${datasource}"

type ref struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type target struct {
	RefID      string `json:"refId"`
	Expr       string `json:"expr"`
	Datasource *ref   `json:"datasource"`
}

type panel struct {
	ID         int      `json:"id"`
	Type       string   `json:"type"`
	Title      string   `json:"title"`
	Datasource *ref     `json:"datasource"`
	Targets    []target `json:"targets"`
	GridPos    *struct {
		H, W, X, Y int
	} `json:"gridPos"`
}

type dashboard struct {
	Title         string  `json:"title"`
	UID           string  `json:"uid"`
	SchemaVersion int     `json:"schemaVersion"`
	Panels        []panel `json:"panels"`
	Templating    struct {
		List []struct {
			Name       string `json:"name"`
			Type       string `json:"type"`
			Query      any    `json:"query"`
			Datasource *ref   `json:"datasource"`
		} `json:"list"`
	} `json:"templating"`
}

func load(t *testing.T) *dashboard {
	t.Helper()
	b, err := os.ReadFile("nonqueue.json")
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("nonqueue.json: %v", err)
	}
	return &d
}

// TestDashboardShape: the dashboard has a title, a uid and a schema
// version; a Prometheus datasource variable that every panel, query and
// query variable uses; unique panel ids; and every non-row panel a grid
// position inside the 24 columns and at least one query.
func TestDashboardShape(t *testing.T) {
	d := load(t)
	if d.Title == "" || d.UID == "" || d.SchemaVersion == 0 {
		t.Errorf("title %q, uid %q, schemaVersion %d: want all set", d.Title, d.UID, d.SchemaVersion)
	}
	dsVar := false
	for _, v := range d.Templating.List {
		switch v.Type {
		case "datasource":
			dsVar = v.Name == "datasource" && v.Query == "prometheus"
		case "query":
			if v.Datasource == nil || v.Datasource.UID != datasource {
				t.Errorf("variable %s: datasource %+v, want uid %s", v.Name, v.Datasource, datasource)
			}
		}
	}
	if !dsVar {
		t.Error("no datasource variable named datasource of type prometheus")
	}
	ids := map[int]string{}
	queries := 0
	for _, p := range d.Panels {
		if prev, dup := ids[p.ID]; dup || p.ID == 0 {
			t.Errorf("panel %q: id %d (also %q)", p.Title, p.ID, prev)
		}
		ids[p.ID] = p.Title
		if p.GridPos == nil || p.GridPos.W <= 0 || p.GridPos.H <= 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("panel %q: grid position %+v", p.Title, p.GridPos)
		}
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.Type != "prometheus" || p.Datasource.UID != datasource {
			t.Errorf("panel %q: datasource %+v, want prometheus %s", p.Title, p.Datasource, datasource)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q: no query", p.Title)
		}
		for _, q := range p.Targets {
			queries++
			if q.Expr == "" || q.RefID == "" || q.Datasource == nil || q.Datasource.UID != datasource {
				t.Errorf("panel %q: query %+v: want an expr, a refId and datasource %s", p.Title, q, datasource)
			}
		}
	}
	if queries < 10 {
		t.Errorf("%d queries in the dashboard: nonqueue.json lost its panels", queries)
	}
}

// grafanaVars replaces the Grafana variables the queries use with values
// Prometheus accepts, so promtool can check the PromQL.
var grafanaVars = strings.NewReplacer("$__rate_interval", "5m", "$job", ".*", "$instance", ".*", "$topics_job", ".*", "$follow_job", ".*")

// TestDashboardPromQL: every query is valid PromQL, checked by promtool as
// the expressions of recording rules (promtool parses them with
// Prometheus' own parser), after the Grafana variables are filled in.
func TestDashboardPromQL(t *testing.T) {
	promtool := testdb.Tool(t, "promtool", "prometheus")
	var rules strings.Builder
	rules.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	n := 0
	for _, p := range load(t).Panels {
		for _, q := range p.Targets {
			n++
			expr := grafanaVars.Replace(q.Expr)
			if strings.Contains(expr, "$") {
				t.Errorf("panel %q: unknown variable in %s", p.Title, q.Expr)
			}
			// JSON strings are valid YAML scalars.
			fmt.Fprintf(&rules, "      - record: dashboard:query%d\n        expr: %s\n", n, strconv.Quote(expr))
		}
	}
	path := filepath.Join(t.TempDir(), "dashboard-rules.yml")
	if err := os.WriteFile(path, []byte(rules.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, promtool, "check", "rules", path).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check rules on the dashboard's %d queries: %v\n%s", n, err, out)
	}
	if want := fmt.Sprintf("SUCCESS: %d rules found", n); !strings.Contains(string(out), want) {
		t.Errorf("promtool: want %q in\n%s", want, out)
	}
}
