package transfer

import "time"

// StagingName exposes stagingName to the external tests.
var StagingName = stagingName

// BreakConnection closes the SSH connection under the Shipper without
// telling it, as a network failure would.
func (s *Shipper) BreakConnection() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur != nil {
		s.cur.ssh.Close()
	}
}

// SetStreamHook sets a function run before each streaming attempt of Ship
// (0, then 1 for the retry after a lost connection).
func (s *Shipper) SetStreamHook(f func(attempt int)) { s.testHookStream = f }

// SetShippedHook runs f once the files are on the primary's host, before
// they are verified (to corrupt one).
func (s *Shipper) SetShippedHook(f func()) { s.testHookShipped = f }

// SetWrittenHook runs f for each file once its bytes are on the primary's
// host and before they are verified.
func (s *Shipper) SetWrittenHook(f func(remote string)) { s.testHookWritten = f }

// SetCksumUsable decides, instead of the probe, whether cksum runs on
// both hosts (VerifyBytes with big files).
func (s *Shipper) SetCksumUsable(ok bool) {
	s.cksumMu.Lock()
	defer s.cksumMu.Unlock()
	s.cksumKnown, s.cksumOK = true, ok
}

// TopicOf exposes Config.topicOf to the external tests.
func TopicOf(c Config, name string) (int64, bool) { return c.topicOf(name) }

// Add hands tables to the dropper, as Ship does with the ones it swapped
// out.
func (d *Dropper) Add(names ...string) { d.b.Add(names...) }

// SwapPause exposes Config.swapPause to the external tests.
func SwapPause(c Config, n int) time.Duration { return c.swapPause(n) }
