package main

import (
	"os"
	"testing"

	"github.com/nonqueue/nonqueue/internal/testdb"
)

var env *testdb.Env

// TestMain starts one sandbox (a primary, one replica, sshd) for the
// harness's tests; they load the bench's own example into it, as the
// harness does.
func TestMain(m *testing.M) {
	os.Exit(testdb.Main(m, "bench", 1, &env))
}
