package transient

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"syscall"
	"testing"

	"github.com/go-sql-driver/mysql"
)

// TestIs: what may cure itself is retried; what retrying cannot cure, and
// what Is does not know, is not.
func TestIs(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"canceled", fmt.Errorf("open: %w", context.Canceled), false},
		{"deadline", context.DeadlineExceeded, true},
		{"too many connections", &mysql.MySQLError{Number: 1040}, true},
		{"shutdown in progress", fmt.Errorf("register: %w", &mysql.MySQLError{Number: 1053}), true},
		{"access denied", &mysql.MySQLError{Number: 1045}, false},
		{"unknown table", &mysql.MySQLError{Number: 1146}, false},
		{"invalid connection", fmt.Errorf("register instance 1: %w", mysql.ErrInvalidConn), true},
		{"refused", &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}, true},
		{"reset", fmt.Errorf("read: %w", syscall.ECONNRESET), true},
		{"no such host", &net.DNSError{Err: "no such host", Name: "nope.invalid", IsNotFound: true}, false},
		{"missing key file", &fs.PathError{Op: "open", Path: "/nope", Err: syscall.ENOENT}, false},
		{"unknown", errors.New("something else"), false},
	} {
		if got := Is(tc.err); got != tc.want {
			t.Errorf("%s: Is(%v) = %v, want %v", tc.name, tc.err, got, tc.want)
		}
	}
}
