// Package sqlcheck decides, before anything reaches the server, whether an
// operator's query is a single plain SELECT: one that MariaDB runs without
// writing, locking or waiting. `nonqueue request --query` takes topic ids
// from such a query and runs it on the primary, so a mistake or a pasted
// statement must not change the primary.
//
// It is a lexer, not a parser. It understands MariaDB's quoting (strings in
// single or double quotes with backslash and doubled-quote escapes,
// identifiers in backquotes, -- and # line comments, /* */ comments) well
// enough to tell which words are SQL and which are data, and refuses:
//
//   - anything but SELECT as the first keyword (after optional opening
//     parentheses, so "(SELECT …) UNION (SELECT …)" passes). WITH is refused
//     too: write a common table expression as a derived table,
//     SELECT id FROM (SELECT …) AS t;
//   - a ';' followed by anything but whitespace and comments;
//   - executable comments (/*! … */, /*M! … */), which the server runs;
//   - INTO (OUTFILE, DUMPFILE, @variables), locking reads (FOR UPDATE,
//     FOR SHARE, LOCK IN SHARE MODE) and SELECT … PROCEDURE;
//   - the built-in functions with effects outside the query's result:
//     named locks (GET_LOCK, RELEASE_LOCK, RELEASE_ALL_LOCKS: a publish takes
//     a named lock on the primary), waits (SLEEP, BENCHMARK,
//     MASTER_POS_WAIT, MASTER_GTID_WAIT), LOAD_FILE (reads the server's
//     files), and the sequence writers NEXTVAL, SETVAL and NEXT VALUE FOR;
//   - NUL bytes, invalid UTF-8, unterminated strings and comments.
//
// Because the server's reading of a quoted string depends on the session's
// sql_mode, a query is lexed the three ways MariaDB can read it: backslash
// escapes in '…' and "…" (the default), in neither (NO_BACKSLASH_ESCAPES),
// and in '…' only ("…" an identifier under ANSI_QUOTES); it is accepted
// only if every reading accepts it and they agree on where it ends. Square
// brackets are refused outside quotes: under sql_mode MSSQL they quote an
// identifier, [a'b], and a quote inside them would start a string for
// this lexer only.
//
// What a lexer cannot know is what a stored or user-defined function does;
// the caller must still run the query in a read-only transaction, which the
// server enforces for tables, and give the account no FILE privilege.
package sqlcheck

import (
	"cmp"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// ErrRefused is wrapped by every *RefusedError.
var ErrRefused = errors.New("query refused")

// RefusedError says why a query is not a single plain SELECT, and where.
type RefusedError struct {
	Reason string
	Offset int // byte offset in the query where the reason was found
}

// Error gives the reason and the byte offset, for the operator to fix the
// query.
func (e *RefusedError) Error() string {
	return fmt.Sprintf("only a single plain SELECT is allowed: %s (at byte %d)", e.Reason, e.Offset)
}

// Unwrap lets errors.Is find ErrRefused.
func (e *RefusedError) Unwrap() error { return ErrRefused }

func refuse(at int, format string, args ...any) error {
	return &RefusedError{Reason: fmt.Sprintf(format, args...), Offset: at}
}

// PlainSelect checks query (see the package comment) and returns it cut
// before its optional trailing ';', ready to send: without the ';' the
// statement is the same whatever the client's multi-statement setting.
func PlainSelect(query string) (string, error) {
	if strings.IndexByte(query, 0) >= 0 {
		return "", refuse(strings.IndexByte(query, 0), "the query contains a NUL byte")
	}
	if !utf8.ValidString(query) {
		return "", refuse(invalidUTF8At(query), "the query is not valid UTF-8")
	}
	cut := -1
	var first error
	for i, m := range quotingModes {
		end, err := check(query, m)
		switch {
		case i == 0:
			cut, first = end, err
		case (err == nil) != (first == nil):
			at := 0
			var re *RefusedError
			if errors.As(cmp.Or(first, err), &re) {
				at = re.Offset
			}
			return "", refuse(at, "the query reads differently under the sql_modes NO_BACKSLASH_ESCAPES or ANSI_QUOTES (a backslash in a quoted string): write a quote inside a string as '' rather than \\'")
		case err == nil && end != cut:
			return "", refuse(min(cut, end), "the query reads differently under the sql_modes NO_BACKSLASH_ESCAPES or ANSI_QUOTES")
		}
	}
	if first != nil {
		return "", first
	}
	return query[:cut], nil
}

// quoting is one way the server may read quoted text: whether a backslash
// escapes the next byte in '…' and in "…" (never in `…`).
type quoting struct{ single, double bool }

// quotingModes: the default sql_mode first (its errors are reported),
// then NO_BACKSLASH_ESCAPES, then ANSI_QUOTES.
var quotingModes = []quoting{{true, true}, {false, false}, {true, false}}

func invalidUTF8At(s string) int {
	for i, r := range s {
		if r == utf8.RuneError {
			if _, size := utf8.DecodeRuneInString(s[i:]); size <= 1 {
				return i
			}
		}
	}
	return 0
}

type kind int

const (
	word   kind = iota // keyword or unquoted identifier, upper-cased
	quoted             // string literal or quoted identifier
	punct              // any other single byte
	semi               // ';'
)

type token struct {
	kind kind
	text string
	pos  int
}

// lex splits q into tokens as the server would under the quoting m,
// dropping whitespace and comments.
func lex(q string, m quoting) ([]token, error) {
	var toks []token
	n := len(q)
	for i := 0; i < n; {
		c := q[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v':
			i++
		case c == '\'' || c == '"' || c == '`':
			end, err := skipQuoted(q, i, c == '\'' && m.single || c == '"' && m.double)
			if err != nil {
				return nil, err
			}
			toks = append(toks, token{quoted, q[i:end], i})
			i = end
		case c == '#':
			i = skipLine(q, i)
		case c == '-' && i+1 < n && q[i+1] == '-':
			// "--" starts a comment only before a space or control
			// character (or at the end); "--1" is minus minus one.
			if i+2 >= n || q[i+2] <= ' ' || q[i+2] == 0x7f {
				i = skipLine(q, i)
				continue
			}
			if q[i+2] >= 0x80 {
				return nil, refuse(i, "'--' before a non-ASCII character: put a space after '--' to start a comment")
			}
			toks = append(toks, token{punct, "-", i})
			i++
		case c == '/' && i+1 < n && q[i+1] == '*':
			if i+2 < n && (q[i+2] == '!' || (q[i+2] == 'M' || q[i+2] == 'm') && i+3 < n && q[i+3] == '!') {
				return nil, refuse(i, "executable comments (/*! … */, /*M! … */) are run by the server")
			}
			end := strings.Index(q[i+2:], "*/")
			if end < 0 {
				return nil, refuse(i, "unterminated /* comment")
			}
			i += 2 + end + 2
		case c == ';':
			toks = append(toks, token{semi, ";", i})
			i++
		case c == '[' || c == ']':
			return nil, refuse(i, "square brackets are not accepted (they quote identifiers under sql_mode MSSQL): quote names with backquotes")
		case isDigit(c) || c == '.' && i+1 < n && isDigit(q[i+1]):
			// A decimal or exponent number ends where its digits do:
			// the server reads 1.5INTO, .5INTO and 1e1INTO as a
			// number followed by INTO. Digits followed by letters
			// otherwise form one identifier (1abc), as below.
			if j, ok := number(q, i); ok {
				toks = append(toks, token{punct, q[i:j], i})
				i = j
				continue
			}
			fallthrough
		case isWordByte(c):
			j := i
			for j < n && isWordByte(q[j]) {
				j++
			}
			toks = append(toks, token{word, strings.ToUpper(q[i:j]), i})
			i = j
		default:
			toks = append(toks, token{punct, q[i : i+1], i})
			i++
		}
	}
	return toks, nil
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// number scans a decimal (digits '.' [digits], or '.' digits) or a number
// with an exponent (e[+-]digits) at q[i], as the server does, and returns
// where it ends; ok is false for plain digits, which the caller reads as
// the start of a word.
func number(q string, i int) (end int, ok bool) {
	n, j := len(q), i
	digits := func() {
		for j < n && isDigit(q[j]) {
			j++
		}
	}
	digits()
	if j < n && q[j] == '.' {
		j++
		digits()
		ok = true
	}
	if j < n && (q[j] == 'e' || q[j] == 'E') {
		k := j + 1
		if k < n && (q[k] == '+' || q[k] == '-') {
			k++
		}
		if k < n && isDigit(q[k]) {
			j = k
			digits()
			ok = true
		}
	}
	return j, ok
}

// isWordByte: letters, digits, _ and $, and every byte of a non-ASCII
// character (MariaDB allows those in unquoted identifiers).
func isWordByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '$' || c >= 0x80
}

// skipQuoted returns the index just past the quoted token starting at
// q[i]. The quote is escaped by doubling it, and by a backslash when
// backslash is set.
func skipQuoted(q string, i int, backslash bool) (int, error) {
	quote := q[i]
	for j := i + 1; j < len(q); j++ {
		switch q[j] {
		case '\\':
			if backslash {
				j++ // the next byte is data, whatever it is
			}
		case quote:
			if j+1 < len(q) && q[j+1] == quote {
				j++
				continue
			}
			return j + 1, nil
		}
	}
	what := "string"
	if quote == '`' {
		what = "quoted identifier"
	}
	return 0, refuse(i, "unterminated %s starting with %c", what, quote)
}

// skipLine returns the index of the newline ending the line comment at i
// (or the end): the server ends # and -- comments at '\n' only.
func skipLine(q string, i int) int {
	if j := strings.IndexByte(q[i:], '\n'); j >= 0 {
		return i + j
	}
	return len(q)
}

// refusedWords are words that have no business in a plain SELECT, with the
// reason given to the operator. They are matched outside strings, quoted
// identifiers and comments only, so `sleep` as a quoted column name passes.
var refusedWords = map[string]string{
	"INTO":              "INTO (OUTFILE, DUMPFILE or variables) writes",
	"OUTFILE":           "INTO OUTFILE writes a file",
	"DUMPFILE":          "INTO DUMPFILE writes a file",
	"UPDATE":            "FOR UPDATE is a locking read",
	"LOCK":              "LOCK IN SHARE MODE is a locking read",
	"PROCEDURE":         "SELECT … PROCEDURE is not a plain SELECT",
	"GET_LOCK":          "GET_LOCK takes a named lock (a publish waits for nonqueue's)",
	"RELEASE_LOCK":      "RELEASE_LOCK changes named locks",
	"RELEASE_ALL_LOCKS": "RELEASE_ALL_LOCKS changes named locks",
	"SLEEP":             "SLEEP waits",
	"BENCHMARK":         "BENCHMARK burns the primary's CPU",
	"MASTER_POS_WAIT":   "MASTER_POS_WAIT waits",
	"MASTER_GTID_WAIT":  "MASTER_GTID_WAIT waits",
	"LOAD_FILE":         "LOAD_FILE reads the server's files",
	"NEXTVAL":           "NEXTVAL advances a sequence",
	"SETVAL":            "SETVAL changes a sequence",
}

// check lexes q under the quoting m and returns where the statement ends
// (before the optional trailing ';').
func check(q string, m quoting) (int, error) {
	toks, err := lex(q, m)
	if err != nil {
		return 0, err
	}
	end := len(q)
	for i, t := range toks {
		if t.kind != semi {
			continue
		}
		if i+1 < len(toks) {
			return 0, refuse(toks[i+1].pos, "more than one statement: only an optional trailing ';' is allowed")
		}
		end = t.pos
		toks = toks[:i]
		break
	}
	first := 0
	for first < len(toks) && toks[first].kind == punct && toks[first].text == "(" {
		first++
	}
	if first == len(toks) {
		return 0, refuse(0, "the query is empty")
	}
	switch t := toks[first]; {
	case t.kind == word && t.text == "SELECT":
	case t.kind == word && t.text == "WITH":
		return 0, refuse(t.pos, "WITH is not accepted: write the common table expression as a derived table, SELECT id FROM (SELECT …) AS t")
	case t.kind == word:
		return 0, refuse(t.pos, "the statement starts with %s, not SELECT", t.text)
	default:
		return 0, refuse(t.pos, "the statement starts with %q, not SELECT", t.text)
	}
	for i, t := range toks {
		if t.kind != word {
			continue
		}
		if why, bad := refusedWords[t.text]; bad {
			return 0, refuse(t.pos, "%s", why)
		}
		next := ""
		if i+1 < len(toks) && toks[i+1].kind == word {
			next = toks[i+1].text
		}
		switch {
		case t.text == "FOR" && next == "SHARE":
			return 0, refuse(t.pos, "FOR SHARE is a locking read")
		case t.text == "NEXT" && next == "VALUE":
			return 0, refuse(t.pos, "NEXT VALUE FOR advances a sequence")
		}
	}
	return end, nil
}
