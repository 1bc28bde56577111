package sqlcheck

import (
	"errors"
	"regexp"
	"strings"
	"testing"
)

func TestPlainSelect(t *testing.T) {
	t.Parallel()
	accepted := []struct{ in, out string }{
		{"SELECT id FROM app.t", ""},
		{"select id from t where note = 'into outfile' and x = \"for update\"", ""},
		{"SELECT `into`, `sleep`(1) FROM t", ""}, // quoted identifiers are names, not keywords
		{"SELECT id FROM t -- INTO OUTFILE '/tmp/x'\nWHERE 1", ""},
		{"SELECT id FROM t # ; DROP TABLE t\n", ""},
		{"SELECT id /* ; DROP TABLE t */ FROM t", ""},
		{"SELECT id FROM t;", "SELECT id FROM t"},
		{"SELECT id FROM t ;  -- done\n /* really */ ", "SELECT id FROM t "},
		{"(SELECT id FROM a) UNION (SELECT id FROM b)", ""},
		{"SELECT 'it''s', \"say \"\"hi\"\"\" FROM t", ""},
		{"SELECT id FROM t WHERE a = 1--1", ""}, // minus minus one, not a comment
		{"SELECT id FROM t FOR SYSTEM_TIME AS OF '2026-01-01'", ""},
		{"SELECT locked, updated_at, intoxicated FROM t", ""}, // words that merely start like refused ones
		{"SELECT id FROM t WHERE s = 'a\\\\b'", ""},           // an escaped backslash: the same string in both modes
		{"SELECT REPLACE(name, 'a', 'b'), INSERT(name, 1, 1, 'x') FROM t", ""},
		{"SELECT 1into, 0x1Finto, 1.5intox, 1e5, .5, 1.e3 FROM t", ""}, // identifiers starting with digits; numbers
	}
	for _, tc := range accepted {
		got, err := PlainSelect(tc.in)
		want := tc.out
		if want == "" {
			want = tc.in
		}
		if err != nil || got != want {
			t.Errorf("PlainSelect(%q) = %q, %v; want %q", tc.in, got, err, want)
		}
	}
	refused := []struct{ in, why string }{
		{"", "empty"},
		{"  -- nothing\n", "empty"},
		{"CREATE TABLE app.nq_probe (x INT)", "starts with CREATE"},
		{"create table x (id int) as select 1", "starts with CREATE"},
		{"INSERT INTO t VALUES (1)", "starts with INSERT"},
		{"UPDATE t SET a = 1", "starts with UPDATE"},
		{"DELETE FROM t", "starts with DELETE"},
		{"CALL app.p(1)", "starts with CALL"},
		{"DO SLEEP(1)", "starts with DO"},
		{"SET @a = 1", "starts with SET"},
		{"DROP TABLE t", "starts with DROP"},
		{"WITH c AS (SELECT 1) SELECT * FROM c", "WITH is not accepted"},
		{"/*!50000 DROP TABLE t */ SELECT 1", "executable comment"},
		{"SELECT 1 /*M!100000 INTO OUTFILE '/tmp/x' */", "executable comment"},
		{"SELECT id FROM t INTO OUTFILE '/tmp/x'", "INTO"},
		{"SELECT id FROM t INTO DUMPFILE '/tmp/x'", "INTO"},
		{"SELECT id INTO @v FROM t", "INTO"},
		{"SELECT id FROM t FOR UPDATE", "FOR UPDATE"},
		{"SELECT id FROM t FOR /* x */ SHARE", "FOR SHARE"},
		{"SELECT id FROM t LOCK IN SHARE MODE", "LOCK IN SHARE MODE"},
		{"SELECT id FROM t WHERE id IN (SELECT id FROM u FOR UPDATE)", "FOR UPDATE"},
		{"SELECT id FROM t PROCEDURE ANALYSE()", "PROCEDURE"},
		{"SELECT GET_LOCK('nonqueue', 10)", "GET_LOCK"},
		{"SELECT sleep(100)", "SLEEP"},
		{"SELECT BENCHMARK(1e9, MD5('x'))", "BENCHMARK"},
		{"SELECT LOAD_FILE('/etc/passwd')", "LOAD_FILE"},
		{"SELECT NEXTVAL(s)", "NEXTVAL"},
		{"SELECT NEXT VALUE FOR s", "NEXT VALUE FOR"},
		{"SELECT 1; DROP TABLE t", "more than one statement"},
		{"SELECT 1;;", "more than one statement"},
		{"SELECT 1; SELECT 2", "more than one statement"},
		{"SELECT 'abc", "unterminated string"},
		{"SELECT `abc", "unterminated quoted identifier"},
		{"SELECT 1 /* abc", "unterminated /* comment"},
		{"SELECT 'a\\'; DROP TABLE t; -- '", "NO_BACKSLASH_ESCAPES"},
		{"SELECT id, '\\' INTO OUTFILE '/tmp/x' -- ' FROM t", "NO_BACKSLASH_ESCAPES"},
		{"SELECT \"\\\"; DROP TABLE t; -- \"", "NO_BACKSLASH_ESCAPES"},
		{"SELECT 1\x00; DROP TABLE t", "NUL byte"},
		{"SELECT '\xff'", "UTF-8"},
		{"SELECT 1 --\u00a0; DROP TABLE t", "non-ASCII"},
		{"(( 1", "starts with 1"},
		{"SELECT 1.5INTO @a", "INTO"}, // the server reads a number, then INTO
		{"SELECT .5INTO @a", "INTO"},
		{"SELECT 1e1INTO @a", "INTO"},
		{"SELECT 1.5e3INTO @a", "INTO"},
		{"SELECT 1e+1INTO OUTFILE '/tmp/x'", "INTO"},
		{"SELECT 1.INTO @a", "INTO"},
		{"SELECT 1.5SLEEP(1)", "SLEEP"},
		{"SELECT 1 AS [a'b] INTO OUTFILE '/tmp/x' -- ']", "square brackets"},
		{"SELECT \"a\\\"b\"", "NO_BACKSLASH_ESCAPES or ANSI_QUOTES"},
		{"(( -1", "starts with \"-\""},
	}
	for _, tc := range refused {
		got, err := PlainSelect(tc.in)
		if err == nil {
			t.Errorf("PlainSelect(%q) accepted: %q", tc.in, got)
			continue
		}
		if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), tc.why) {
			t.Errorf("PlainSelect(%q): %v; want an ErrRefused saying %q", tc.in, err, tc.why)
		}
	}
}

// secondStatements are appended after a ';' by the fuzz test.
var secondStatements = []string{
	"DROP TABLE t", "SELECT 1", "CREATE TABLE x (a INT)", "UPDATE t SET a = 1", "x",
}

// FuzzPlainSelect: PlainSelect never panics; what it accepts has no ';'
// outside strings, identifiers and comments (by an independent, regular
// expression reading) and is a prefix of the input followed only by ';',
// whitespace and comments; and a query it accepts, followed by a new line,
// a ';' and another statement, is refused.
func FuzzPlainSelect(f *testing.F) {
	for _, s := range []string{
		"SELECT id FROM t",
		"SELECT id FROM t;",
		"SELECT 'a;b' FROM t -- c;d\n",
		"SELECT `a;``b` FROM t /* ; */",
		"SELECT 'a\\'; DROP TABLE t; -- '",
		"SELECT \"\\\"; DROP TABLE t; -- \"",
		"SELECT 1 # ;\n; DROP TABLE t",
		"SELECT 1 --; DROP TABLE t",
		"SELECT 1 -- ; DROP TABLE t",
		"/*! SELECT 1 */ ; DROP TABLE t",
		"(SELECT 1) UNION (SELECT 2)",
		"SELECT 'it''s'",
		"SELECT 1 /* a */; /* b */",
		"SELECT x'41', _utf8mb4'a', N'b', @`v`, @'w'",
		"SELECT [a'b] -- ']",
		"SELECT \"\\\"; DROP TABLE t; -- \" '\\''",
	} {
		f.Add(s, uint8(0))
	}
	f.Fuzz(func(t *testing.T, q string, pick uint8) {
		out, err := PlainSelect(q)
		if err != nil {
			if !errors.Is(err, ErrRefused) {
				t.Fatalf("PlainSelect(%q): error %v does not wrap ErrRefused", q, err)
			}
			return
		}
		if !strings.HasPrefix(q, out) {
			t.Fatalf("PlainSelect(%q) = %q, not a prefix", q, out)
		}
		for _, m := range quotingModes {
			if top := stripQuoted(out, m); strings.ContainsAny(top, ";[]") {
				t.Fatalf("PlainSelect(%q) accepted %q with a top-level ';' or bracket (quoting %+v): %q", q, out, m, top)
			}
			rest := strings.TrimSpace(stripQuoted(q[len(out):], m))
			if rest != "" && rest != ";" {
				t.Fatalf("PlainSelect(%q) accepted %q, leaving %q after it (quoting %+v)", q, out, rest, m)
			}
		}
		second := secondStatements[int(pick)%len(secondStatements)]
		if got, err := PlainSelect(q + "\n;" + second); err == nil {
			t.Fatalf("PlainSelect accepted %q followed by ;%s: %q", q, second, got)
		}
	})
}

// quotedRE builds, for a quoting mode, a regular expression matching at
// the start of a string one token to remove: a string, a quoted
// identifier or a comment. It is the reference reading of MariaDB's
// quoting, written independently of lex.
func quotedRE(m quoting) *regexp.Regexp {
	single, double := `'(?:[^']|'')*'`, `"(?:[^"]|"")*"`
	if m.single {
		single = `'(?:[^'\\]|\\.|'')*'`
	}
	if m.double {
		double = `"(?:[^"\\]|\\.|"")*"`
	}
	return regexp.MustCompile(`^(?s:` + single + `|` + double + `|` + "`(?:[^`]|``)*`" + `|/\*.*?\*/|#[^\n]*|--[\x00-\x20\x7f][^\n]*|--$)`)
}

var quotedREs = map[quoting]*regexp.Regexp{}

func init() {
	for _, m := range quotingModes {
		quotedREs[m] = quotedRE(m)
	}
}

// stripQuoted replaces every string, quoted identifier and comment of s,
// as read under m, with a space.
func stripQuoted(s string, m quoting) string {
	re := quotedREs[m]
	var b strings.Builder
	for i := 0; i < len(s); {
		if strings.ContainsRune("'\"`/#-", rune(s[i])) {
			if t := re.FindString(s[i:]); t != "" {
				b.WriteByte(' ')
				i += len(t)
				continue
			}
		}
		b.WriteByte(s[i])
		i++
	}
	return b.String()
}
