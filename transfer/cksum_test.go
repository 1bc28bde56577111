package transfer

import (
	"bytes"
	"math/rand/v2"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

// TestPosixCRC: the known value of "123456789", and agreement with the
// system's cksum on random data of sizes around the 8-byte stride.
func TestPosixCRC(t *testing.T) {
	t.Parallel()
	var h posixCRC
	h.Write([]byte("123456789"))
	if got := h.Sum32(); got != 930766865 {
		t.Fatalf("cksum of 123456789 = %d, want 930766865", got)
	}
	bin, err := exec.LookPath("cksum")
	if err != nil {
		t.Skip("no cksum binary to compare with")
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for _, size := range []int{0, 1, 7, 8, 9, 63, 64, 65, 4096, 1 << 20} {
		data := make([]byte, size)
		for i := range data {
			data[i] = byte(rng.Uint32())
		}
		var h posixCRC
		// Written in uneven pieces, as a stream arrives.
		for rest := data; len(rest) > 0; {
			n := min(len(rest), 1+rng.IntN(100))
			h.Write(rest[:n])
			rest = rest[n:]
		}
		cmd := exec.Command(bin)
		cmd.Stdin = bytes.NewReader(data)
		out, err := cmd.Output()
		if err != nil {
			t.Fatal(err)
		}
		want, _ := strconv.ParseUint(strings.Fields(string(out))[0], 10, 32)
		if got := h.Sum32(); uint64(got) != want {
			t.Errorf("size %d: %d, cksum says %d", size, got, want)
		}
	}
}

func BenchmarkPosixCRC(b *testing.B) {
	data := make([]byte, 1<<20)
	b.SetBytes(int64(len(data)))
	var h posixCRC
	for b.Loop() {
		h.Write(data)
	}
}
