package transfer_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/internal/testdb"
	"github.com/nonqueue/nonqueue/transfer"
)

// BenchmarkShip ships and publishes one topic's two 1,000-row result
// tables per op, at 1 and 4 concurrent shippers sharing one Shipper (one
// SSH connection), as the instances of a worker process do, with the
// shipped files synced (the default) and not (Config.NoSync): with
// -count N the two alternate, which keeps a shared machine's drift out of
// the difference.
func BenchmarkShip(b *testing.B) {
	for _, conc := range []int{1, 4} {
		for _, noSync := range []bool{false, true} {
			name := fmt.Sprintf("shippers=%d/sync=%v", conc, !noSync)
			b.Run(name, func(b *testing.B) { benchShip(b, conc, noSync) })
		}
	}
}

func benchShip(b *testing.B, conc int, noSync bool) {
	schema := env.New(b)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cfg := transfer.Config{SSH: sshConfig(), PrimaryDatadir: env.SB.Primary.Datadir, Schema: schema, Tables: []string{"Dynamics_{id}", "Post_{id}"}, NoSync: noSync}
	sh, err := transfer.NewShipper(cfg, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer sh.Close()
	primary := testdb.Open(b, env.Primary(schema))
	replica := testdb.Open(b, env.Replica(0, schema))
	mc := env.Replica(0, schema)
	mc.Params = map[string]string{"sql_log_bin": "0"}
	local := testdb.Open(b, mc)
	var datadir string
	if err := replica.QueryRowContext(ctx, "SELECT @@datadir").Scan(&datadir); err != nil {
		b.Fatal(err)
	}
	for topic := 1; topic <= conc; topic++ {
		for _, q := range []string{
			fmt.Sprintf("CREATE TABLE Dynamics_%d (id INT PRIMARY KEY, x BIGINT NOT NULL) ENGINE=MyISAM", topic),
			fmt.Sprintf("INSERT INTO Dynamics_%d SELECT seq, seq FROM seq_1_to_1000", topic),
			fmt.Sprintf("CREATE TABLE Post_%d (id INT PRIMARY KEY, body VARCHAR(100) NOT NULL) ENGINE=MyISAM", topic),
			fmt.Sprintf("INSERT INTO Post_%d SELECT seq, CONCAT('post ', seq) FROM seq_1_to_1000", topic),
		} {
			if _, err := local.ExecContext(ctx, q); err != nil {
				b.Fatal(err)
			}
		}
	}
	if err := sh.Connect(ctx); err != nil {
		b.Fatal(err)
	}
	var token atomic.Uint64
	var ops atomic.Int64
	var transfer_, publish atomic.Int64
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for topic := int64(1); topic <= int64(conc); topic++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ops.Add(1) <= int64(b.N) {
				s, err := sh.Ship(ctx, &transfer.ShipParams{
					TopicID: topic, Token: token.Add(1), Replica: replica, ReplicaDatadir: datadir, Primary: primary,
					LockName: fmt.Sprintf("%s/%d", schema, topic), Fence: func(context.Context) error { return nil },
				})
				if err != nil {
					b.Error(err)
					return
				}
				transfer_.Add(int64(s.TransferTime))
				publish.Add(int64(s.PublishTime))
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	b.ReportMetric(float64(b.N)/el.Seconds(), "topics/s")
	b.ReportMetric(float64(transfer_.Load())/float64(b.N)/1e6, "transfer-ms")
	b.ReportMetric(float64(publish.Load())/float64(b.N)/1e6, "publish-ms")
}
