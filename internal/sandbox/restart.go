package sandbox

import (
	"context"
	"fmt"
	"path/filepath"
	"syscall"
)

// Restart stops one server of the sandbox and starts it again on the same
// port and datadir, for fault tests: with crash the process is SIGKILLed (a
// crash: the server then runs its own recovery, InnoDB's and the DDL log's),
// otherwise SIGTERMed and waited for (an operator's restart). Replicas
// reconnect by themselves (master_connect_retry=1); clients see their
// connections break. name is "primary" or "replicaK". The new PID is
// recorded in sandbox.json, so Down still stops it.
func (s *Sandbox) Restart(ctx context.Context, name string, crash bool) error {
	srv := s.server(name)
	if srv == nil {
		return fmt.Errorf("sandbox: restart: no server %q", name)
	}
	bin, err := findBinaries()
	if err != nil {
		return err
	}
	ref := procRef{name: srv.Name, pid: srv.PID, hard: crash}
	if err := stopProcs(ctx, s.Dir, []procRef{ref}, stopTimeout, discardLogger()); err != nil {
		return fmt.Errorf("sandbox: restart %s: %w", name, err)
	}
	sdir := filepath.Dir(srv.Datadir)
	errLog := filepath.Join(sdir, "error.log")
	offset := fileSize(errLog)
	d, err := startDetached(bin.mariadbd, serverArgs(*srv, srv.Port), filepath.Join(sdir, "mariadbd.out"))
	if err != nil {
		return fmt.Errorf("sandbox: restart %s: %w", name, err)
	}
	srv.PID = d.pid
	if err := saveState(s); err != nil {
		_ = syscall.Kill(d.pid, syscall.SIGKILL)
		return fmt.Errorf("sandbox: restart %s: write %s: %w", name, stateFile, err)
	}
	if err := waitMariaDB(ctx, d, srv.Socket); err != nil {
		return withLogTail(fmt.Errorf("sandbox: restart %s (pid %d, port %d): %w", name, d.pid, srv.Port, err), errLog, offset)
	}
	return nil
}

// server returns the server called name, nil if there is none.
func (s *Sandbox) server(name string) *Server {
	if s.Primary.Name == name {
		return &s.Primary
	}
	for i := range s.Replicas {
		if s.Replicas[i].Name == name {
			return &s.Replicas[i]
		}
	}
	return nil
}
