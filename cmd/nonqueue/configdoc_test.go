package main

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode"
)

// configDocPath is the configuration reference, relative to this package.
const configDocPath = "../../docs/configuration.md"

// TestConfigDocMatchesCode keeps docs/configuration.md and the
// configuration structs in step: every key LoadConfig accepts (the toml
// tags reachable from Config) must have a row in the doc, and every row in
// the doc must name a key LoadConfig accepts. A key added to the code
// without a line of documentation, or a documented key that was renamed or
// removed, fails here.
func TestConfigDocMatchesCode(t *testing.T) {
	code := configKeys(reflect.TypeFor[Config](), "")
	if len(code) < 50 {
		// Guards the walk itself: the configuration has more keys than
		// this, so a walk that stops early cannot pass by finding nothing.
		t.Fatalf("found only %d keys in Config: the reflection walk is broken", len(code))
	}
	doc, dups := docKeys(t, configDocPath)
	for _, k := range dups {
		t.Errorf("%s documents %s twice", configDocPath, k)
	}
	for _, k := range sortedKeys(code) {
		if !doc[k] {
			t.Errorf("key %s is in the code (%s) but not in %s", k, code[k], configDocPath)
		}
	}
	for _, k := range sortedKeys(doc) {
		if _, ok := code[k]; !ok {
			t.Errorf("key %s is in %s but LoadConfig does not accept it", k, configDocPath)
		}
	}
}

// configKeys returns every TOML key reachable from t as "section.key"
// (nested tables and arrays of tables as "section.sub.key"), mapped to the
// Go field that holds it. time.Duration and other non-struct types are
// leaves; structs and slices of structs are tables.
func configKeys(t reflect.Type, prefix string) map[string]string {
	out := map[string]string{}
	durationT := reflect.TypeFor[time.Duration]()
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		if name == "" || name == "-" {
			continue
		}
		key := name
		if prefix != "" {
			key = prefix + "." + name
		}
		ft := f.Type
		for ft.Kind() == reflect.Pointer || ft.Kind() == reflect.Slice {
			ft = ft.Elem()
		}
		if ft.Kind() == reflect.Struct && ft != durationT {
			// A table: its keys, and (for a table nested in a section,
			// such as [[dashboard.replicas]]) a row naming it in its
			// parent's section too.
			if prefix != "" {
				out[key] = t.Name() + "." + f.Name
			}
			for k, v := range configKeys(ft, key) {
				out[k] = v
			}
			continue
		}
		out[key] = t.Name() + "." + f.Name
	}
	return out
}

var (
	// docSection matches a section heading: "## [ssh]" or
	// "## [[dashboard.replicas]]".
	docSection = regexp.MustCompile(`^## \[{1,2}([a-z_.]+)\]{1,2}\s*$`)
	// docRow matches a table row whose first cell is a key in backticks.
	docRow = regexp.MustCompile("^\\| `([a-z_]+)` \\|")
)

// docKeys reads the keys documented in path: the first cell of each table
// row under a section heading, qualified by the section. Rows under other
// headings are ignored. Keys documented twice are returned in dups.
func docKeys(t *testing.T, path string) (keys map[string]bool, dups []string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("open the configuration reference: %v", err)
	}
	defer f.Close()
	keys = map[string]bool{}
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			section = ""
			if m := docSection.FindStringSubmatch(line); m != nil {
				section = m[1]
			}
			continue
		}
		m := docRow.FindStringSubmatch(line)
		if m == nil || section == "" {
			continue
		}
		k := section + "." + m[1]
		if keys[k] {
			dups = append(dups, k)
		}
		keys[k] = true
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return keys, dups
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// docFiles are the user-facing markdown files, relative to this package.
var docFiles = []string{"../../README.md", "../../docs/*.md", "../../bench/README.md"}

// TestDocsLinksResolve checks every relative link of the user-facing
// markdown: the file it names exists in the repository, and an anchor
// (#section) names a heading of that file, so a renamed section or a moved
// file cannot leave a reader at a dead link. Links to other sites are not
// fetched.
func TestDocsLinksResolve(t *testing.T) {
	var files []string
	for _, g := range docFiles {
		m, err := filepath.Glob(g)
		if err != nil || len(m) == 0 {
			t.Fatalf("no markdown file matches %s (%v)", g, err)
		}
		files = append(files, m...)
	}
	checked := 0
	for _, f := range files {
		for _, l := range markdownLinks(t, f) {
			if strings.Contains(l, "://") || strings.HasPrefix(l, "mailto:") {
				continue
			}
			checked++
			target, anchor, _ := strings.Cut(l, "#")
			path := f
			if target != "" {
				path = filepath.Join(filepath.Dir(f), target)
			}
			if _, err := os.Stat(path); err != nil {
				t.Errorf("%s: link %q: %v", f, l, err)
				continue
			}
			if anchor == "" || !strings.HasSuffix(path, ".md") {
				continue
			}
			if !slices.Contains(markdownAnchors(t, path), anchor) {
				t.Errorf("%s: link %q: %s has no heading with anchor #%s", f, l, path, anchor)
			}
		}
	}
	if checked < 10 {
		t.Fatalf("checked only %d links: the link parser is broken", checked)
	}
}

var mdLink = regexp.MustCompile(`\]\(([^)\s]+)\)`)

// markdownLinks returns the targets of the inline links in path, outside
// fenced code blocks.
func markdownLinks(t *testing.T, path string) []string {
	t.Helper()
	var out []string
	for _, line := range markdownProse(t, path) {
		for _, m := range mdLink.FindAllStringSubmatch(line, -1) {
			out = append(out, m[1])
		}
	}
	return out
}

// markdownAnchors returns the anchors GitHub gives the headings of path:
// lower case, punctuation other than "-" and "_" dropped, spaces made
// "-", and "-1", "-2", … added to repeats.
func markdownAnchors(t *testing.T, path string) []string {
	t.Helper()
	seen := map[string]int{}
	var out []string
	for _, line := range markdownProse(t, path) {
		if !strings.HasPrefix(line, "#") {
			continue
		}
		text := strings.TrimSpace(strings.TrimLeft(line, "#"))
		var b strings.Builder
		for _, r := range strings.ToLower(text) {
			switch {
			case r == ' ':
				b.WriteRune('-')
			case r == '-' || r == '_' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r > 127 && unicode.IsLetter(r):
				b.WriteRune(r)
			}
		}
		a := b.String()
		if n := seen[a]; n > 0 {
			seen[a] = n + 1
			a = fmt.Sprintf("%s-%d", a, n)
		} else {
			seen[a] = 1
		}
		out = append(out, a)
	}
	return out
}

// markdownProse returns the lines of path outside fenced code blocks.
func markdownProse(t *testing.T, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	var out []string
	fenced := false
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "```") {
			fenced = !fenced
			continue
		}
		if !fenced {
			out = append(out, line)
		}
	}
	return out
}

// TestReadmeConfigLoads loads the README's minimal configuration with
// LoadConfig, so the first configuration a user copies cannot drift from
// the keys and rules of the code.
func TestReadmeConfigLoads(t *testing.T) {
	data, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(data), "```toml\n")
	if !ok {
		t.Fatal("README.md has no ```toml block")
	}
	block, _, ok := strings.Cut(rest, "```")
	if !ok {
		t.Fatal("README.md's ```toml block is not closed")
	}
	path := filepath.Join(t.TempDir(), "nonqueue.toml")
	if err := os.WriteFile(path, []byte(block), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := LoadConfig(path)
	if err != nil {
		t.Fatalf("README.md's configuration does not load: %v", err)
	}
	if !c.Topics.Mapped || c.Procedure.Name == "" || len(c.Results.Tables) == 0 || c.SSH.Datadir == "" {
		t.Error("README.md's configuration lost a section: want [topics] mapped, [procedure] name, [results] tables and [ssh] datadir")
	}
}
