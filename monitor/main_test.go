package monitor_test

import (
	"context"
	"database/sql"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/nonqueue/nonqueue/internal/flavor"
	"github.com/nonqueue/nonqueue/internal/meta"
	"github.com/nonqueue/nonqueue/internal/testdb"
)

var env *testdb.Env

func TestMain(m *testing.M) { os.Exit(testdb.Main(m, "monitor", 1, &env)) }

// replication serialises tests on the one shared replica: tests that stop
// or delay replication hold it exclusively, tests that need replication
// healthy hold it shared, so neither sees the other's disruption.
var replication sync.RWMutex

type bundle struct {
	ctx      context.Context
	name     string  // the test's database: also the heartbeat schema
	primary  *sql.DB // app user on the primary, default database name
	replica  *sql.DB // app user on replica 1, default database name
	flavor   flavor.Flavor
	writerID uint32
}

// setup gives t its own database with a heartbeat table on the primary
// and the replica. exclusive says t disrupts replication.
func setup(t *testing.T, exclusive bool) *bundle {
	t.Helper()
	// Registered first, so it runs last: after the test's own cleanups
	// have restored replication and dropped the database.
	if exclusive {
		replication.Lock()
		t.Cleanup(replication.Unlock)
	} else {
		replication.RLock()
		t.Cleanup(replication.RUnlock)
	}
	name := env.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	b := &bundle{
		ctx:      ctx,
		name:     name,
		primary:  testdb.Open(t, env.Primary(name)),
		replica:  testdb.Open(t, env.Replica(0, name)),
		writerID: 7,
	}
	f, err := flavor.Detect(ctx, b.replica)
	if err != nil {
		t.Fatal(err)
	}
	b.flavor = f
	// The meta tables, as queue.Config.DDL creates them in the meta schema.
	for _, s := range meta.DDL(name) {
		if _, err := b.primary.ExecContext(ctx, s); err != nil {
			t.Fatalf("create meta tables: %s: %v", s, err)
		}
	}
	if err := env.WaitReplicas(ctx, b.primary); err != nil {
		t.Fatal(err)
	}
	return b
}

// rootReplica opens a root session on replica 1 through its socket, to
// stop and start replication.
func rootReplica(t *testing.T) *sql.DB {
	t.Helper()
	mc := mysql.NewConfig()
	mc.User = "root"
	mc.Net = "unix"
	mc.Addr = env.SB.Replicas[0].Socket
	return testdb.Open(t, mc)
}

// admin runs replication statements as root, failing t on error.
func admin(t *testing.T, ctx context.Context, root *sql.DB, stmts ...string) {
	t.Helper()
	for _, s := range stmts {
		if _, err := root.ExecContext(ctx, s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
}

// restore runs replication statements in a cleanup, on a fresh context,
// then waits for the replica to catch up with the primary.
func (b *bundle) restore(t *testing.T, root *sql.DB, stmts ...string) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		for _, s := range stmts {
			if _, err := root.ExecContext(ctx, s); err != nil {
				t.Errorf("restore replication: %s: %v", s, err)
			}
		}
		if err := env.WaitReplicas(ctx, b.primary); err != nil {
			t.Errorf("restore replication: %v", err)
		}
	})
}
