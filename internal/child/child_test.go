package child

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestStopTermThenKill: a child that exits on SIGTERM stops cleanly; one
// that ignores it is SIGKILLed after the grace period, with its whole
// process group (a grandchild included), and the error says so.
func TestStopTermThenKill(t *testing.T) {
	dir := t.TempDir()
	var s Set
	polite, err := s.Start("polite", filepath.Join(dir, "polite.log"), false, "sleep", "60")
	if err != nil {
		t.Fatal(err)
	}
	pidFile := filepath.Join(dir, "grandchild.pid")
	stubborn, err := s.Start("stubborn", filepath.Join(dir, "stubborn.log"), true, "bash", "-c",
		`trap '' TERM; sleep 60 & echo $! > `+pidFile+`; echo started; wait`)
	if err != nil {
		t.Fatal(err)
	}
	var grandchild int
	for i := 0; i < 100 && grandchild == 0; i++ {
		if b, err := os.ReadFile(pidFile); err == nil && strings.HasSuffix(string(b), "\n") {
			grandchild, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		} else {
			time.Sleep(50 * time.Millisecond)
		}
	}
	if grandchild == 0 {
		t.Fatal("the stubborn child did not start its grandchild within 5s")
	}
	if polite.Exited() || stubborn.Exited() {
		t.Fatal("a child exited before Stop")
	}
	start := time.Now()
	if err := polite.Stop(5 * time.Second); err == nil || !strings.Contains(err.Error(), "signal: terminated") {
		t.Fatalf("polite stop: want its exit by SIGTERM reported, got %v", err)
	}
	if d := time.Since(start); d > 4*time.Second {
		t.Errorf("polite child took %v to stop on SIGTERM", d)
	}
	start = time.Now()
	err = s.StopAll(500 * time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "stubborn") || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("stubborn stop: want a kill reported, got %v", err)
	}
	if d := time.Since(start); d < 500*time.Millisecond {
		t.Errorf("killed after %v, before the grace period", d)
	}
	if !stubborn.Exited() {
		t.Error("stubborn child still running after StopAll")
	}
	// The grandchild was in the group: it gets SIGKILL too (it may linger
	// as a zombie of init for a moment).
	deadline := time.Now().Add(5 * time.Second)
	for syscall.Kill(grandchild, 0) == nil && !zombie(grandchild) {
		if time.Now().After(deadline) {
			t.Fatalf("grandchild %d still running after the group was killed", grandchild)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func zombie(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	f := strings.Fields(string(b)[strings.LastIndexByte(string(b), ')')+1:])
	return len(f) > 0 && f[0] == "Z"
}
