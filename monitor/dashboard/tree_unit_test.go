package dashboard

import (
	"fmt"
	"strings"
	"testing"

	"github.com/nonqueue/nonqueue/monitor"
)

// TestReplicaTreeShapes: replicaTree's rules on the cases a live page
// rarely shows.
func TestReplicaTreeShapes(t *testing.T) {
	t.Parallel()
	group := func(id uint32) ReplicaGroup { return ReplicaGroup{ServerID: id} }
	draw := func(nodes []*ReplicaNode) string {
		var b strings.Builder
		var walk func(n *ReplicaNode)
		walk = func(n *ReplicaNode) {
			fmt.Fprintf(&b, "%d", n.ServerID)
			if len(n.Children) > 0 {
				b.WriteString("(")
				for i, c := range n.Children {
					if i > 0 {
						b.WriteString(" ")
					}
					walk(c)
				}
				b.WriteString(")")
			}
		}
		for i, n := range nodes {
			if i > 0 {
				b.WriteString(" ")
			}
			walk(n)
		}
		return b.String()
	}
	for _, c := range []struct {
		name     string
		primary  uint32
		groups   []ReplicaGroup
		recorded map[uint32]uint32
		want     string // the tree, then the groups as server@depth
	}{
		// Two tiers under the primary; siblings by server id.
		{"tiers", 1000, []ReplicaGroup{group(1004), group(1002), group(1003), group(1001)},
			map[uint32]uint32{1001: 1000, 1002: 1000, 1003: 1001, 1004: 1002},
			"1000(1001(1003) 1002(1004)) | 1001@1 1003@2 1002@1 1004@2"},
		// A live read's source beats the recorded one (a re-pointed replica).
		{"live first", 1000, []ReplicaGroup{{ServerID: 1002, Live: &monitor.ReplicaView{Status: monitor.ReplicaStatus{SourceServerID: 1000}}}, group(1001)},
			map[uint32]uint32{1001: 1000, 1002: 1001},
			"1000(1001 1002) | 1001@1 1002@1"},
		// Records that form a loop are cut where the loop would close; a
		// replica naming itself is a root.
		{"loop", 1000, []ReplicaGroup{group(1001), group(1002), group(1003)},
			map[uint32]uint32{1001: 1002, 1002: 1001, 1003: 1003},
			"1000 1002(1001) 1003 | 1002@0 1001@1 1003@0"},
		// No primary id (its read failed): roots by server id, a source
		// without a group of its own is a node.
		{"no primary", 0, []ReplicaGroup{group(1005), group(1001)},
			map[uint32]uint32{1005: 1004},
			"1001 1004(1005) | 1001@0 1005@1"},
	} {
		tree, groups := replicaTree(c.primary, c.groups, c.recorded)
		var order []string
		for _, g := range groups {
			order = append(order, fmt.Sprintf("%d@%d", g.ServerID, g.Depth))
		}
		if got := draw(tree) + " | " + strings.Join(order, " "); got != c.want {
			t.Errorf("%s: %s, want %s", c.name, got, c.want)
		}
	}
}
