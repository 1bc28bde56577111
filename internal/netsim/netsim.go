// Package netsim puts a simulated network between nonqueue's workers and
// the primary on one machine: each Link is a Shopify toxiproxy proxy (run
// in this process, as a library) with a latency toxic, behind a small
// counting relay that measures the round trips the client waits for.
//
// The machine's kernel has no netem, so latency cannot come from the
// kernel; toxiproxy adds it in user space on loopback, and the same
// proxies later take the faults of a soak (timeout, reset_peer). The
// round-trip counts are what the latency multiplies: the bench reports
// them per topic (bench/README.md, scenario 8).
//
// A connection goes client → relay (Link.Addr) → toxiproxy → upstream.
// The whole round trip is added on the downstream direction (upstream →
// client): toxiproxy's latency has a granularity of one millisecond, so a
// 1 ms round trip cannot be split into two halves of 0.5 ms. A request
// and its reply therefore take RTT more than on plain loopback, whichever
// direction carries the delay. The relay sits on the client's side of the
// delay, so it sees replies when the client does.
package netsim

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/rs/zerolog"
)

// Protocol says what the relay can decode on a link besides its turns.
type Protocol int

const (
	// Opaque links (SSH: encrypted) are counted in turns and bytes only.
	Opaque Protocol = iota
	// MySQL links also count the client's commands from the protocol's
	// packet framing (a client packet with sequence id 0 starts a
	// command). This needs a plain-text connection, which is what the
	// sandbox's workers use.
	MySQL
)

// Network is a set of links sharing one latency, run in this process.
// Close stops every link.
type Network struct {
	rtt    time.Duration
	server *toxiproxy.ApiServer

	mu    sync.Mutex
	links []*Link
}

// New returns a network that delays every reply by rtt, a whole number of
// milliseconds (toxiproxy's unit), 0 for none: then the links only count.
func New(rtt time.Duration) (*Network, error) {
	if rtt < 0 || rtt%time.Millisecond != 0 {
		return nil, fmt.Errorf("netsim: latency %v: want a whole number of milliseconds, 0 or more", rtt)
	}
	logger := zerolog.Nop()
	return &Network{rtt: rtt, server: toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), logger)}, nil
}

// RTT is the round trip the network adds.
func (n *Network) RTT() time.Duration { return n.rtt }

// Link is one proxied path to an upstream address. Clients connect to
// Addr instead of the upstream.
type Link struct {
	// Name says which path it is ("mysql", "ssh").
	Name     string
	Upstream string
	proto    Protocol
	proxy    *toxiproxy.Proxy
	ln       net.Listener

	wg    sync.WaitGroup
	mu    sync.Mutex
	conns map[net.Conn]struct{}
	done  bool

	st counters
}

type counters struct {
	conns, turns, commands, bytesUp, bytesDown atomic.Int64
	byCommand                                  [256]atomic.Int64
}

// Stats are a link's counts since it started; subtract two snapshots for
// an interval.
type Stats struct {
	// Conns is the number of client connections accepted.
	Conns int64 `json:"conns"`
	// Turns counts the times a client sent data after having received
	// some on the same connection: in a request-reply protocol, each is
	// one round trip the client waited for. Requests sent back to back
	// (pipelined, or a reply-less command followed by the next one) are
	// one turn; a reply that arrives between two pipelined requests makes
	// it two, so pipelining is counted conservatively.
	Turns int64 `json:"turns"`
	// Commands is the number of client commands (MySQL links only).
	Commands int64 `json:"commands"`
	// ByCommand counts Commands by the MySQL command byte's name.
	ByCommand map[string]int64 `json:"by_command,omitempty"`
	// BytesUp and BytesDown: client → upstream and back.
	BytesUp   int64 `json:"bytes_up"`
	BytesDown int64 `json:"bytes_down"`
}

// Sub returns s - o, for the counts of an interval.
func (s Stats) Sub(o Stats) Stats {
	d := Stats{Conns: s.Conns - o.Conns, Turns: s.Turns - o.Turns, Commands: s.Commands - o.Commands,
		BytesUp: s.BytesUp - o.BytesUp, BytesDown: s.BytesDown - o.BytesDown}
	for k, v := range s.ByCommand {
		if x := v - o.ByCommand[k]; x != 0 {
			if d.ByCommand == nil {
				d.ByCommand = map[string]int64{}
			}
			d.ByCommand[k] = x
		}
	}
	return d
}

// Stats returns the link's counts so far.
func (l *Link) Stats() Stats {
	s := Stats{Conns: l.st.conns.Load(), Turns: l.st.turns.Load(), Commands: l.st.commands.Load(),
		BytesUp: l.st.bytesUp.Load(), BytesDown: l.st.bytesDown.Load()}
	for i := range l.st.byCommand {
		if v := l.st.byCommand[i].Load(); v != 0 {
			if s.ByCommand == nil {
				s.ByCommand = map[string]int64{}
			}
			s.ByCommand[commandName(byte(i))] += v
		}
	}
	return s
}

// Addr is the address clients use instead of the upstream.
func (l *Link) Addr() string { return l.ln.Addr().String() }

// Port is Addr's port.
func (l *Link) Port() int { return l.ln.Addr().(*net.TCPAddr).Port }

// Add starts a link to upstream (host:port) listening on 127.0.0.1 at a
// free port.
func (n *Network) Add(name, upstream string, proto Protocol) (*Link, error) {
	p := toxiproxy.NewProxy(n.server, name, "127.0.0.1:0", upstream)
	if err := n.server.Collection.Add(p, true); err != nil {
		return nil, fmt.Errorf("netsim: start the toxiproxy proxy %s to %s: %w", name, upstream, err)
	}
	if n.rtt > 0 {
		toxic := fmt.Sprintf(`{"name":"rtt","type":"latency","stream":"downstream","toxicity":1,"attributes":{"latency":%d}}`,
			n.rtt.Milliseconds())
		if _, err := p.Toxics.AddToxicJson(bytes.NewReader([]byte(toxic))); err != nil {
			p.Stop()
			return nil, fmt.Errorf("netsim: add the latency toxic to %s: %w", name, err)
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		p.Stop()
		return nil, fmt.Errorf("netsim: listen for %s: %w", name, err)
	}
	l := &Link{Name: name, Upstream: upstream, proto: proto, proxy: p, ln: ln, conns: map[net.Conn]struct{}{}}
	l.wg.Add(1)
	go l.accept()
	n.mu.Lock()
	n.links = append(n.links, l)
	n.mu.Unlock()
	return l, nil
}

// Proxy is the link's toxiproxy proxy, for toxics beyond the latency
// (timeout, reset_peer, bandwidth).
func (l *Link) Proxy() *toxiproxy.Proxy { return l.proxy }

// Close stops every link and waits for their goroutines.
func (n *Network) Close() error {
	n.mu.Lock()
	links := n.links
	n.links = nil
	n.mu.Unlock()
	for _, l := range links {
		l.close()
	}
	return nil
}

func (l *Link) close() {
	l.mu.Lock()
	l.done = true
	for c := range l.conns {
		c.Close()
	}
	l.mu.Unlock()
	l.ln.Close()
	l.wg.Wait()
	l.proxy.Stop()
}

func (l *Link) track(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done {
		c.Close()
		return false
	}
	l.conns[c] = struct{}{}
	return true
}

func (l *Link) untrack(c net.Conn) {
	l.mu.Lock()
	delete(l.conns, c)
	l.mu.Unlock()
	c.Close()
}

func (l *Link) accept() {
	defer l.wg.Done()
	for {
		c, err := l.ln.Accept()
		if err != nil {
			return
		}
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			l.relay(c)
		}()
	}
}

// dialTimeout bounds the relay's connection to its toxiproxy proxy.
const dialTimeout = 5 * time.Second

func (l *Link) relay(client net.Conn) {
	if !l.track(client) {
		return
	}
	defer l.untrack(client)
	d := net.Dialer{Timeout: dialTimeout}
	up, err := d.DialContext(context.Background(), "tcp", l.proxy.Listen)
	if err != nil {
		return
	}
	if !l.track(up) {
		return
	}
	defer l.untrack(up)
	l.st.conns.Add(1)
	cs := &connState{link: l}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		cs.copy(up, client, true)
		closeWrite(up)
	}()
	cs.copy(client, up, false)
	closeWrite(client)
	wg.Wait()
}

func closeWrite(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
}

// connState is one connection's turn and packet-framing state.
type connState struct {
	link *Link
	mu   sync.Mutex
	// received: the client got data since it last sent.
	received bool
	// MySQL framing of the client's stream.
	hdr    [4]byte
	hn     int // header bytes read
	remain int // payload bytes still to skip
	first  bool
}

func (cs *connState) copy(dst, src net.Conn, up bool) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			cs.observe(buf[:n], up)
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				_ = dst.Close()
			}
			return
		}
	}
}

func (cs *connState) observe(b []byte, up bool) {
	st := &cs.link.st
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if !up {
		st.bytesDown.Add(int64(len(b)))
		cs.received = true
		return
	}
	st.bytesUp.Add(int64(len(b)))
	if cs.received {
		st.turns.Add(1)
		cs.received = false
	}
	if cs.link.proto == MySQL {
		cs.frame(b)
	}
}

// frame walks the MySQL packets in the client's bytes: a 3-byte
// little-endian length, a sequence id, the payload. A packet with
// sequence id 0 starts a command, its first payload byte names it.
func (cs *connState) frame(b []byte) {
	for len(b) > 0 {
		if cs.remain > 0 {
			if cs.first {
				cs.link.st.byCommand[b[0]].Add(1)
				cs.first = false
			}
			k := min(cs.remain, len(b))
			cs.remain -= k
			b = b[k:]
			continue
		}
		k := copy(cs.hdr[cs.hn:], b)
		cs.hn += k
		b = b[k:]
		if cs.hn < 4 {
			return
		}
		cs.hn = 0
		cs.remain = int(cs.hdr[0]) | int(cs.hdr[1])<<8 | int(cs.hdr[2])<<16
		if cs.hdr[3] == 0 && cs.remain > 0 {
			cs.link.st.commands.Add(1)
			cs.first = true
		}
	}
}

// commandName names a MySQL command byte as the server's Com_ counters do
// (the common ones; others by number).
func commandName(c byte) string {
	switch c {
	case 0x01:
		return "quit"
	case 0x02:
		return "init_db"
	case 0x03:
		return "query"
	case 0x0e:
		return "ping"
	case 0x11:
		return "change_user"
	case 0x16:
		return "stmt_prepare"
	case 0x17:
		return "stmt_execute"
	case 0x19:
		return "stmt_close"
	case 0x1a:
		return "stmt_reset"
	case 0x1f:
		return "reset_connection"
	}
	return "cmd_" + strconv.Itoa(int(c))
}
