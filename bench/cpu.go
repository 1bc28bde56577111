package main

import (
	"fmt"
	"strings"

	"github.com/prometheus/procfs"

	"github.com/nonqueue/nonqueue/internal/child"
)

// cpuSample is the CPU time (user + system, seconds) used so far by each
// part of the topology, read from /proc at one instant. Two samples around
// a round say where its CPU went: the machine has 2 cores shared by
// everything, so CPU per topic, not latency, bounds the throughput.
type cpuSample map[string]float64

// cpuParts lists the parts in the order they are printed. "machine" is the
// busy time of every CPU (from /proc/stat: everything but idle and iowait),
// "other" what the machine spent outside the listed parts (the harness's
// own polling, kernel threads, other tenants).
var cpuParts = []string{"primary", "replica1", "replica2", "workers", "sshd", "other", "machine"}

// sampleCPU reads the CPU time of the sandbox's servers, of sshd with all
// its descendants (session processes, sftp-server), of the workers with
// their descendants, and of the whole machine.
func (b *bench) sampleCPU(workers []*child.Process) (cpuSample, error) {
	fs, err := procfs.NewDefaultFS()
	if err != nil {
		return nil, err
	}
	procs, err := fs.AllProcs()
	if err != nil {
		return nil, err
	}
	type entry struct {
		ppid int
		sec  float64
	}
	all := make(map[int]entry, len(procs))
	for _, p := range procs {
		st, err := p.Stat()
		if err != nil {
			continue // gone since the listing
		}
		all[p.PID] = entry{ppid: st.PPID, sec: st.CPUTime()}
	}
	roots := map[int]string{b.sb.Primary.PID: "primary", b.sb.SSH.PID: "sshd"}
	for k, r := range b.sb.Replicas {
		roots[r.PID] = fmt.Sprintf("replica%d", k+1)
	}
	for _, w := range workers {
		roots[w.Pid()] = "workers"
	}
	// part finds the listed ancestor of pid, if any (bounded: pid 1 or a
	// cycle-free depth of 64).
	part := func(pid int) string {
		for range 64 {
			if name, ok := roots[pid]; ok {
				return name
			}
			e, ok := all[pid]
			if !ok || e.ppid <= 1 {
				return ""
			}
			pid = e.ppid
		}
		return ""
	}
	s := cpuSample{}
	for pid, e := range all {
		if name := part(pid); name != "" {
			s[name] += e.sec
		}
	}
	st, err := fs.Stat()
	if err != nil {
		return nil, err
	}
	c := st.CPUTotal
	s["machine"] = c.User + c.Nice + c.System + c.IRQ + c.SoftIRQ + c.Steal
	return s, nil
}

// cpuPerTopic turns two samples into milliseconds of CPU per topic.
func cpuPerTopic(before, after cpuSample, topics int) map[string]float64 {
	out := map[string]float64{}
	listed := 0.0
	for _, k := range cpuParts {
		if k == "other" || k == "machine" {
			continue
		}
		d := after[k] - before[k]
		listed += d
		out[k] = d * 1000 / float64(topics)
	}
	m := after["machine"] - before["machine"]
	out["machine"] = m * 1000 / float64(topics)
	out["other"] = (m - listed) * 1000 / float64(topics)
	return out
}

// formatCPU prints a cpuPerTopic map on one line, in cpuParts order.
func formatCPU(m map[string]float64) string {
	var sb strings.Builder
	for _, k := range cpuParts {
		if v, ok := m[k]; ok {
			fmt.Fprintf(&sb, " %s %.2f", k, v)
		}
	}
	return strings.TrimSpace(sb.String())
}
