// Package ident validates and quotes SQL identifiers that come from
// configuration (schema, table and column names).
//
// Values never go into SQL text: they are always bound as `?` arguments.
// Identifiers cannot be bound, so they are checked against a strict pattern
// first and then quoted, which makes injection through configuration
// impossible even if a check were bypassed.
package ident

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
)

// ErrInvalid is wrapped by every validation failure, so callers can tell a
// bad name from other errors with errors.Is.
var ErrInvalid = errors.New("invalid identifier")

var pattern = regexp.MustCompile(`^[A-Za-z0-9_]{1,64}$`)

// Validate reports whether name is an identifier nonqueue accepts: 1 to 64
// ASCII letters, digits or underscores, not all digits (MariaDB would read
// an all-digit name as a number in some positions).
func Validate(name string) error {
	if !pattern.MatchString(name) {
		return fmt.Errorf("%w %q: want 1-64 characters of A-Z, a-z, 0-9 and _", ErrInvalid, name)
	}
	if strings.Trim(name, "0123456789") == "" {
		return fmt.Errorf("%w %q: must not be all digits", ErrInvalid, name)
	}
	return nil
}

// Quote returns name as a backtick-quoted identifier, doubling any backtick
// inside it. It does not validate; call Validate on configuration first.
func Quote(name string) string {
	return "`" + strings.ReplaceAll(name, "`", "``") + "`"
}

// Qualified returns `schema`.`name`, both quoted.
func Qualified(schema, name string) string {
	return Quote(schema) + "." + Quote(name)
}
