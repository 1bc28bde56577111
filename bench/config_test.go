package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/BurntSushi/toml"

	"github.com/nonqueue/nonqueue/internal/sandbox"
)

// TestWorkerConfigsParse: every worker configuration the harness writes,
// scenario 8's through writeConfig included, is valid TOML carrying the
// harness's settings. Scenario 8's once left [worker] pipeline without a
// value, and its workers exited at start.
func TestWorkerConfigsParse(t *testing.T) {
	dir := t.TempDir()
	srv := func(name string, id uint32, port int) sandbox.Server {
		return sandbox.Server{Name: name, ServerID: id, Host: "127.0.0.1", Port: port, Datadir: filepath.Join(dir, name)}
	}
	b := &bench{dir: dir, sb: &sandbox.Sandbox{
		Dir: dir, Primary: srv("primary", 1000, 3306),
		Replicas: []sandbox.Server{srv("replica1", 1001, 3307), srv("replica2", 1002, 3308)},
		User:     "app", Password: "pw",
	}}
	b.s.IdleWait = defaultSettings(false).IdleWait
	b.s.Verify = defaultSettings(false).Verify
	for _, pipeline := range []bool{true, false} {
		b.s.Pipeline = pipeline
		if err := b.writeConfigs(); err != nil {
			t.Fatal(err)
		}
		latency := filepath.Join(dir, "bench", "latency.toml")
		if err := b.writeConfig(latency, b.sb, 0, procSmall, false); err != nil {
			t.Fatal(err)
		}
		paths, err := filepath.Glob(filepath.Join(dir, "bench", "*.toml"))
		if err != nil || len(paths) < 2 {
			t.Fatalf("configs written: %v %v", paths, err)
		}
		for _, p := range paths {
			var c struct {
				Worker struct {
					Pipeline *bool `toml:"pipeline"`
				} `toml:"worker"`
			}
			body, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			if err := toml.Unmarshal(body, &c); err != nil {
				t.Fatalf("%s: %v", filepath.Base(p), err)
			}
			if c.Worker.Pipeline == nil || *c.Worker.Pipeline != pipeline {
				t.Errorf("%s: [worker] pipeline %v, want %v", filepath.Base(p), c.Worker.Pipeline, pipeline)
			}
		}
	}
}
