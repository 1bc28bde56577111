package dashboard

import (
	"context"

	"github.com/nonqueue/nonqueue/monitor"
	"github.com/nonqueue/nonqueue/queue"
)

// InstanceViews exposes instanceViews to the external tests, which have a
// Queue on the sandbox (it reads the lease, and looks a topic up when the
// running list is capped).
func (s *Sources) InstanceViews(ctx context.Context, recs []monitor.InstanceRecord, running []queue.TopicRow) []InstanceView {
	return s.instanceViews(ctx, recs, running)
}
