package dashboard_test

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/nonqueue/nonqueue/monitor"
)

// seedTree registers instances as a tiered fleet reports itself: replica
// 1001 (the sandbox's replica, read live too) under the primary 1000,
// 1003 under 1001, 1005 under 1004 (a middle tier that runs no worker
// and whose own source nobody recorded), and 1007 that recorded no source.
func seedTree(t *testing.T, b *bundle) {
	t.Helper()
	for _, r := range []struct {
		id     int64
		server uint32
		source uint32
	}{{100101, 1001, 1000}, {100301, 1003, 1001}, {100302, 1003, 1001}, {100501, 1005, 1004}, {100701, 1007, 0}} {
		if err := b.hist.Register(b.ctx, monitor.InstanceInfo{ID: r.id, Host: "w", PID: 1, Version: "test", ReplicaServerID: r.server}); err != nil {
			t.Fatal(err)
		}
		if err := b.hist.SetState(b.ctx, r.id, monitor.StateIdle, 0, 0, 0); err != nil {
			t.Fatal(err)
		}
		if r.source != 0 {
			if err := b.hist.SetSource(b.ctx, r.server, r.source); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// TestReplicaTree: the replicas page draws the replication tree from what
// it knows (the live read of replica 1001, the sources the other
// instances recorded), and orders and indents the replica sections by it.
func TestReplicaTree(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	seedTree(t, b)
	r := b.client(t).get("/replicas")
	expect(t, "replicas", r, 200, `<ul class="tree" id="tree">`, "<b>primary</b> server_id 1000",
		"replicates from server_id 1001", "(a source; no instances)", "source unknown")
	// Nesting: 1003 inside 1001's list, 1005 inside 1004's.
	for _, nested := range []string{
		`<li data-server-id="1000"><b>primary</b> server_id 1000
<ul><li data-server-id="1001"><a href="#replica-1001">replica server_id 1001</a>
<ul><li data-server-id="1003">`,
		`<li data-server-id="1004">server_id 1004 <span class="muted">(a source; no instances)</span>
<ul><li data-server-id="1005">`,
	} {
		if !strings.Contains(r.body, nested) {
			t.Errorf("tree lacks\n%s\nin\n%s", nested, snippet(r.body))
		}
	}
	// Sections in tree order, with their depth: the primary's subtree
	// first, then the other roots by server id.
	re := regexp.MustCompile(`id="replica-(\d+)" data-server-id="\d+" data-source="(\d+)" data-depth="(\d+)"`)
	var got []string
	for _, m := range re.FindAllStringSubmatch(r.body, -1) {
		got = append(got, m[1]+"<"+m[2]+"@"+m[3])
	}
	want := "1001<1000@1 1003<1001@2 1005<1004@1 1007<0@0"
	if strings.Join(got, " ") != want {
		t.Errorf("sections (server<source@depth): %v, want %s", got, want)
	}
}

// TestBrowserReplicaTree: in Chromium the tree nests as the fleet is
// shaped and a second-tier replica's section sits indented under the
// first tier's.
func TestBrowserReplicaTree(t *testing.T) {
	requireChromium(t)
	t.Parallel()
	b := setup(t, nil)
	seedTree(t, b)
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromiumPath), chromedp.Flag("headless", true), chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.NoFirstRun, chromedp.NoDefaultBrowserCheck, chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1200, 900),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(b.ctx, opts...)
	defer cancelAlloc()
	bctx, cancelBrowser := chromedp.NewContext(actx)
	defer cancelBrowser()
	if err := chromedp.Do(bctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	ctx, cancel := context.WithTimeout(bctx, time.Minute)
	defer cancel()
	if err := chromedp.Do(ctx, chromedp.Navigate(b.ts.URL+"/replicas"), chromedp.WaitVisible(chromedp.CSS("#tree"))); err != nil {
		t.Fatalf("browser: open the replicas page: %v", err)
	}
	// Each tree item's parent item, as the browser parsed the lists.
	parents, err := chromedp.Run(ctx, chromedp.Evaluate[map[string]string](
		`Object.fromEntries([...document.querySelectorAll("#tree li")].map(li => [li.dataset.serverId, li.parentElement.closest("li")?.dataset.serverId ?? "root"]))`))
	if err != nil {
		t.Fatalf("browser: read the tree: %v", err)
	}
	want := map[string]string{"1000": "root", "1001": "1000", "1003": "1001", "1004": "root", "1005": "1004", "1007": "root"}
	for k, v := range want {
		if parents[k] != v {
			t.Errorf("tree item %s under %q, want %q (whole tree: %v)", k, parents[k], v, parents)
		}
	}
	// The stylesheet indents the second tier's section.
	left, err := chromedp.Run(ctx, chromedp.Evaluate[[]float64](
		`["#replica-1001", "#replica-1003"].map(s => document.querySelector(s).getBoundingClientRect().left)`))
	if err != nil {
		t.Fatalf("browser: read the sections' positions: %v", err)
	}
	if len(left) != 2 || left[1] <= left[0] {
		t.Errorf("second tier's section at x=%v, not indented under the first tier's", left)
	}
}

// TestReplicaTreeWithoutSourceTable: on a schema from before
// replica_source the page still renders, with the live read's source and
// a note saying what to run.
func TestReplicaTreeWithoutSourceTable(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	seedTree(t, b)
	b.exec(t, "DROP TABLE replica_source")
	r := b.client(t).get("/replicas")
	expect(t, "replicas", r, 200, "replicates from server_id 1000", "Recorded replication sources unavailable", "nonqueue schema apply")
}
