package transfer

import "encoding/binary"

// posixCRC is the CRC of POSIX cksum (polynomial 0x04C11DB7, most
// significant bit first, the length appended, the result inverted). GNU
// coreutils computes it with carry-less multiplication at several GB/s,
// an order of magnitude faster than its sha256sum, so a shipped file can be
// verified on the primary's host in about the time of one read. It guards
// against bytes lost or changed on the way to disk; the SSH transport
// already authenticates the bytes in transit.
type posixCRC struct {
	crc uint32
	n   uint64
}

var cksumTables = func() (t [8][256]uint32) {
	for i := range 256 {
		c := uint32(i) << 24
		for range 8 {
			if c&0x80000000 != 0 {
				c = c<<1 ^ 0x04C11DB7
			} else {
				c <<= 1
			}
		}
		t[0][i] = c
	}
	for k := 1; k < 8; k++ {
		for i := range 256 {
			c := t[k-1][i]
			t[k][i] = c<<8 ^ t[0][c>>24]
		}
	}
	return t
}()

// Write adds p; it never fails.
func (h *posixCRC) Write(p []byte) (int, error) {
	t := &cksumTables
	crc := h.crc
	h.n += uint64(len(p))
	q := p
	for len(q) >= 8 {
		crc ^= binary.BigEndian.Uint32(q)
		crc = t[7][crc>>24] ^ t[6][crc>>16&0xff] ^ t[5][crc>>8&0xff] ^ t[4][crc&0xff] ^
			t[3][q[4]] ^ t[2][q[5]] ^ t[1][q[6]] ^ t[0][q[7]]
		q = q[8:]
	}
	for _, b := range q {
		crc = crc<<8 ^ t[0][byte(crc>>24)^b]
	}
	h.crc = crc
	return len(p), nil
}

// Sum32 is the value cksum prints for the bytes written.
func (h *posixCRC) Sum32() uint32 {
	crc := h.crc
	for n := h.n; n > 0; n >>= 8 {
		crc = crc<<8 ^ cksumTables[0][byte(crc>>24)^byte(n)]
	}
	return ^crc
}
