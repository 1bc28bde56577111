package main

import (
	"os"
	"testing"

	"github.com/nonqueue/nonqueue/internal/testdb"
)

var env *testdb.Env

// TestMain doubles as the nonqueue binary: with NQ_TEST_AS_NONQUEUE=1 the
// test executable runs main, so tests can start real worker processes
// (and SIGKILL or SIGSTOP them) without a separate build step.
func TestMain(m *testing.M) {
	if os.Getenv("NQ_TEST_AS_NONQUEUE") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(testdb.Main(m, "cmd", 2, &env))
}
