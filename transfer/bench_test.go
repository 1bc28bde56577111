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
// SSH connection), as the instances of a worker process do.
func BenchmarkShip(b *testing.B) {
	for _, conc := range []int{1, 4} {
		b.Run(fmt.Sprintf("shippers=%d", conc), func(b *testing.B) {
			schema := env.New(b)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			defer cancel()
			cfg := transfer.Config{SSH: sshConfig(), PrimaryDatadir: env.SB.Primary.Datadir, Schema: schema, Tables: []string{"Dynamics_{id}", "Post_{id}"}}
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
		})
	}
}

// BenchmarkSyncCost measures what the fsync of shipped files costs a
// topic: two Shippers, one syncing (the default) and one not
// (Config.NoSync), ship the same topics in turn, op by op, so a shared
// machine's drift falls on both alike. It reports each one's mean transfer
// time (export, stream, sync, verify) and the difference, at 1 and 4
// concurrent shippers.
func BenchmarkSyncCost(b *testing.B) {
	for _, conc := range []int{1, 4} {
		b.Run(fmt.Sprintf("shippers=%d", conc), func(b *testing.B) {
			schema := env.New(b)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			defer cancel()
			var shippers [2]*transfer.Shipper // [0] syncs, [1] does not
			for i := range shippers {
				cfg := transfer.Config{SSH: sshConfig(), PrimaryDatadir: env.SB.Primary.Datadir, Schema: schema,
					Tables: []string{"Dynamics_{id}", "Post_{id}"}, NoSync: i == 1}
				sh, err := transfer.NewShipper(cfg, nil)
				if err != nil {
					b.Fatal(err)
				}
				defer sh.Close()
				if err := sh.Connect(ctx); err != nil {
					b.Fatal(err)
				}
				shippers[i] = sh
			}
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
			var token atomic.Uint64
			var ops atomic.Int64
			var spent, count [2]atomic.Int64
			b.ResetTimer()
			var wg sync.WaitGroup
			for topic := int64(1); topic <= int64(conc); topic++ {
				wg.Go(func() {
					for op := ops.Add(1); op <= int64(b.N); op = ops.Add(1) {
						which := op % 2
						s, err := shippers[which].Ship(ctx, &transfer.ShipParams{
							TopicID: topic, Token: token.Add(1), Replica: replica, ReplicaDatadir: datadir, Primary: primary,
							LockName: fmt.Sprintf("%s/%d", schema, topic), Fence: func(context.Context) error { return nil },
						})
						if err != nil {
							b.Error(err)
							return
						}
						spent[which].Add(int64(s.TransferTime))
						count[which].Add(1)
					}
				})
			}
			wg.Wait()
			mean := func(i int) float64 { return float64(spent[i].Load()) / float64(max(count[i].Load(), 1)) / 1e6 }
			b.ReportMetric(mean(0), "transfer-ms-sync")
			b.ReportMetric(mean(1), "transfer-ms-nosync")
			b.ReportMetric(mean(0)-mean(1), "fsync-ms")
		})
	}
}
