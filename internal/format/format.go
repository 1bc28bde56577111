// Package format holds the few text formats more than one package shows an
// operator or stores: byte sizes, grouped numbers, and strings cut to a
// column's width. One copy, so `nonqueue status`, the dashboard and the
// recorded errors agree.
package format

import (
	"strconv"
	"strings"
)

// Bytes shows a size in binary units with one decimal: 512 B, 1.5 KiB,
// 5.0 GiB (up to PiB).
func Bytes(n int64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatInt(n, 10) + " B"
	}
	f, i := float64(n), 0
	for f >= unit && i < 5 {
		f /= unit
		i++
	}
	return strconv.FormatFloat(f, 'f', 1, 64) + " " + [...]string{"B", "KiB", "MiB", "GiB", "TiB", "PiB"}[i]
}

// Thousands groups thousands: 1,000,000.
func Thousands(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// Truncate cuts s to at most n bytes on a UTF-8 rune boundary, so a
// message stored in a VARCHAR column stays valid text.
func Truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && s[n]&0xC0 == 0x80 {
		n--
	}
	return s[:n]
}
