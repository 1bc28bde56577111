package dashboard_test

import (
	"testing"

	"github.com/nonqueue/nonqueue/queue"
)

// TestRefreshShown: the topic list and the topic page show each topic's
// periodic refresh: "off" where neither the configuration nor its column
// sets one, the topic's own interval marked "(own)", and the next run
// under "due" (a refreshed topic waiting for it is scheduled).
func TestRefreshShown(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	if _, err := b.q.Request(b.ctx, &queue.RequestParams{IDs: []int64{1, 2}, Scope: queue.ScopeFull, Create: true}); err != nil {
		t.Fatal(err)
	}
	b.exec(t, "UPDATE topic SET refresh_interval = 90 WHERE id = 2")
	c := b.client(t)
	r := c.get("/topics")
	expect(t, "topic list", r, 200, "<th>refresh</th>", "<td>off</td>", "<td>every 1m30s (own)</td>")
	expect(t, "topic page", c.get("/topics/2"), 200, `<th>periodic refresh</th><td id="topic-refresh">every 1m30s (own)</td>`)
	expect(t, "topic page, no refresh", c.get("/topics/1"), 200, `<td id="topic-refresh">off</td>`)
}
