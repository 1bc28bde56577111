package netsim

import (
	"io"
	"net"
	"testing"
	"time"
)

// echoMySQL is a stand-in server for the framing test: it answers each
// client packet with one packet (a fake OK) and greets first, as MySQL does.
func echoMySQL(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				ok := []byte{1, 0, 0, 0, 0}
				if _, err := c.Write(ok); err != nil {
					return
				}
				hdr := make([]byte, 4)
				for {
					if _, err := io.ReadFull(c, hdr); err != nil {
						return
					}
					n := int(hdr[0]) | int(hdr[1])<<8 | int(hdr[2])<<16
					if _, err := io.ReadFull(c, make([]byte, n)); err != nil {
						return
					}
					if _, err := c.Write(ok); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

func packet(seq byte, payload ...byte) []byte {
	return append([]byte{byte(len(payload)), 0, 0, seq}, payload...)
}

// TestLinkCountsAndDelays sends three commands one at a time and two back
// to back through a 2 ms link: five commands, four turns (the pipelined
// pair is one), and each waited-for reply at least 2 ms late.
func TestLinkCountsAndDelays(t *testing.T) {
	nw, err := New(2 * time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer nw.Close()
	l, err := nw.Add("mysql", echoMySQL(t), MySQL)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", l.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	reply := make([]byte, 5)
	read := func() {
		t.Helper()
		if err := c.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, reply); err != nil {
			t.Fatal(err)
		}
	}
	read() // greeting
	// The handshake response (sequence 1) is no command.
	if _, err := c.Write(packet(1, 0xaa, 0xbb)); err != nil {
		t.Fatal(err)
	}
	read()
	start := time.Now()
	for range 3 {
		if _, err := c.Write(packet(0, 0x03, 'S', 'E', 'L')); err != nil {
			t.Fatal(err)
		}
		read()
	}
	if el := time.Since(start); el < 6*time.Millisecond {
		t.Errorf("three round trips took %v, want at least 6ms at a 2ms round trip", el)
	}
	if _, err := c.Write(append(packet(0, 0x19, 1, 0, 0, 0), packet(0, 0x03, 'X')...)); err != nil {
		t.Fatal(err)
	}
	read()
	read()
	st := l.Stats()
	if st.Commands != 5 || st.ByCommand["query"] != 4 || st.ByCommand["stmt_close"] != 1 {
		t.Errorf("commands %d %v, want 5: 4 queries and 1 stmt_close", st.Commands, st.ByCommand)
	}
	// Turns: the handshake response, three queries, the pipelined pair.
	if st.Turns != 5 {
		t.Errorf("turns %d, want 5", st.Turns)
	}
	if st.Conns != 1 {
		t.Errorf("conns %d, want 1", st.Conns)
	}
}

// TestLinkRoundTripTime reports the mean round trip through a 1 ms link
// and a 0 ms one (the proxies' own cost), to calibrate the bench.
func TestLinkRoundTripTime(t *testing.T) {
	addr := echoMySQL(t)
	for _, rtt := range []time.Duration{0, time.Millisecond} {
		nw, err := New(rtt)
		if err != nil {
			t.Fatal(err)
		}
		l, err := nw.Add("mysql", addr, MySQL)
		if err != nil {
			t.Fatal(err)
		}
		c, err := net.Dial("tcp", l.Addr())
		if err != nil {
			t.Fatal(err)
		}
		reply := make([]byte, 5)
		if _, err := io.ReadFull(c, reply); err != nil {
			t.Fatal(err)
		}
		const n = 200
		start := time.Now()
		for range n {
			if _, err := c.Write(packet(0, 0x0e)); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(c, reply); err != nil {
				t.Fatal(err)
			}
		}
		mean := time.Since(start) / n
		t.Logf("rtt %v: mean round trip %v", rtt, mean)
		if mean < rtt {
			t.Errorf("mean round trip %v below the link's %v", mean, rtt)
		}
		c.Close()
		nw.Close()
	}
}
