package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/nonqueue/nonqueue/internal/ident"
	"github.com/nonqueue/nonqueue/worker/follow"
)

// privilege is one privilege on one object, as SHOW GRANTS writes it but
// unquoted: object is "*.*", "db.*", "db.table" or "PROCEDURE db.name".
type privilege struct {
	object, priv string
}

// need is a privilege an account needs, and why: the why is printed as a
// comment above its GRANT and in a missing-privilege failure.
type need struct {
	privilege
	why string
	// onlyApply: only schema apply uses it, so check does not fail when
	// it is missing (an operator may revoke it after schema apply).
	onlyApply bool
}

// grantsBegin and grantsEnd delimit the GRANT block of `nonqueue check`,
// so an operator (or a script) can copy exactly the statements.
const (
	grantsBegin = "----- BEGIN GRANTS -----"
	grantsEnd   = "----- END GRANTS -----"
)

// serverRole is a server a configured account is used on, and what for.
type serverRole struct {
	label   string // "primary", "replica", "dashboard replica 127.0.0.1:3307"
	section string // for the password variable
	server  Server
	primary bool // the primary: worker, dashboard, request, schema apply
	worker  bool // the worker's replica ([replica])
}

// grantProbe is what one server said about the account nonqueue uses on it.
type grantProbe struct {
	role      serverRole
	account   string      // CURRENT_USER() quoted as 'user'@'host'; guessed when err
	granted   []privilege // SHOW GRANTS FOR CURRENT_USER
	others    []string    // grant lines not parsed into privileges (roles, PROXY, GRANT OPTION)
	needSuper bool        // primary only: binary log on and log_bin_trust_function_creators off
	err       error
}

// serverRoles lists every server and account the configuration names.
func (c *Config) serverRoles() []serverRole {
	roles := []serverRole{{label: "primary", section: "primary", server: c.Primary, primary: true}}
	if c.Replica.User != "" {
		roles = append(roles, serverRole{label: "replica", section: "replica", server: c.Replica, worker: true})
	}
	for _, s := range c.Dashboard.Replicas {
		roles = append(roles, serverRole{label: "dashboard replica " + s.addr(), section: "replica", server: s})
	}
	return roles
}

// probeGrants connects to each server without sql_log_bin=0 (which needs
// a privilege the account may lack) and reads its account and grants.
func probeGrants(ctx context.Context, c *Config) []*grantProbe {
	var out []*grantProbe
	for _, r := range c.serverRoles() {
		p := &grantProbe{role: r, account: quoteAccount(r.server.User, "%")}
		p.err = p.read(ctx)
		out = append(out, p)
	}
	return out
}

func (p *grantProbe) read(ctx context.Context) error {
	mc, err := p.role.server.MySQL(p.role.section)
	if err != nil {
		return err
	}
	mc.Timeout = 5 * time.Second
	db, err := openPool(mc, 1)
	if err != nil {
		return fmt.Errorf("open %s: %w", p.role.label, err)
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	var cur string
	if err := db.QueryRowContext(ctx, "SELECT /* nonqueue check */ CURRENT_USER()").Scan(&cur); err != nil {
		return fmt.Errorf("read the account on the %s: %w", p.role.label, err)
	}
	user, host, _ := strings.Cut(cur, "@")
	p.account = quoteAccount(user, host)
	if p.role.primary {
		var logBin, trust int
		if err := db.QueryRowContext(ctx, "SELECT /* nonqueue check */ @@global.log_bin, @@global.log_bin_trust_function_creators").Scan(&logBin, &trust); err != nil {
			return fmt.Errorf("read log_bin on the primary: %w", err)
		}
		p.needSuper = logBin == 1 && trust == 0
	}
	rows, err := db.QueryContext(ctx, "SHOW /* nonqueue check */ GRANTS FOR CURRENT_USER")
	if err != nil {
		return fmt.Errorf("SHOW GRANTS on the %s: %w", p.role.label, err)
	}
	defer rows.Close()
	for rows.Next() {
		var line string
		if err := rows.Scan(&line); err != nil {
			return fmt.Errorf("SHOW GRANTS on the %s: %w", p.role.label, err)
		}
		privs, other := parseGrant(line)
		p.granted = append(p.granted, privs...)
		if other != "" {
			p.others = append(p.others, other)
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("SHOW GRANTS on the %s: %w", p.role.label, err)
	}
	return nil
}

// quoteAccount writes an account as GRANT takes it: 'user'@'host'.
func quoteAccount(user, host string) string {
	q := func(s string) string {
		return "'" + strings.ReplaceAll(strings.ReplaceAll(s, `\`, `\\`), "'", "''") + "'"
	}
	return q(user) + "@" + q(host)
}

// parseGrant reads one line of SHOW GRANTS. It returns the privileges
// it names (column privileges count as the table's) and, for what is
// not a plain privilege — a role, PROXY, WITH GRANT OPTION — a short text
// to report.
func parseGrant(line string) (privs []privilege, other string) {
	rest, ok := strings.CutPrefix(line, "GRANT ")
	if !ok {
		return nil, line
	}
	on := strings.Index(rest, " ON ")
	to := strings.LastIndex(rest, " TO ")
	if on < 0 || to < on {
		return nil, "role " + strings.TrimSpace(strings.SplitN(rest, " TO ", 2)[0])
	}
	list, object := rest[:on], strings.ReplaceAll(rest[on+4:to], "`", "")
	if strings.HasSuffix(line, " WITH GRANT OPTION") {
		other = "WITH GRANT OPTION ON " + object
	}
	depth, start := 0, 0
	add := func(s string) {
		if i := strings.IndexByte(s, '('); i >= 0 {
			s = s[:i] // a column privilege
		}
		s = strings.ToUpper(strings.TrimSpace(s))
		if s == "PROXY" {
			other = "PROXY ON " + object
			return
		}
		if s != "" && s != "USAGE" {
			privs = append(privs, privilege{object, s})
		}
	}
	for i, r := range list {
		switch r {
		case '(':
			depth++
		case ')':
			depth--
		case ',':
			if depth == 0 {
				add(list[start:i])
				start = i + 1
			}
		}
	}
	add(list[start:])
	return privs, other
}

// covers reports whether privileges set grant p, directly or through a
// wider object (the database, or *.*) or ALL PRIVILEGES.
func covers(set []privilege, p privilege) bool {
	objects := []string{p.object, "*.*"}
	if db, _, ok := strings.Cut(strings.TrimPrefix(p.object, "PROCEDURE "), "."); ok && db != "*" {
		objects = append(objects, db+".*")
	}
	for _, g := range set {
		if slices.Contains(objects, g.object) && (g.priv == p.priv || g.priv == "ALL PRIVILEGES") {
			return true
		}
	}
	return false
}

// neededGrants is what the account on server r needs, derived from the
// statements nonqueue runs there (see docs/operations.md, Privileges).
// needSuper says the primary's binary log needs SUPER to create the
// request trigger.
func (c *Config) neededGrants(r serverRole, needSuper bool) []need {
	var out []need
	add := func(object, why string, privs ...string) {
		for _, p := range privs {
			out = append(out, need{privilege: privilege{object, p}, why: why})
		}
	}
	t := c.Topics
	meta, topic := t.MetaSchema+".*", t.Schema+"."+t.Table
	results := c.Results.Schema + ".*"
	if r.primary {
		add(meta, "run history, instance registry, lag heartbeat, pauses and replication sources; CREATE and ALTER: schema apply creates them and adds later columns", "SELECT", "INSERT", "UPDATE", "CREATE", "ALTER")
		if t.Mapped {
			add(topic, "claims, leases and requests; ALTER and TRIGGER: schema apply adds nonqueue's columns, indexes and request trigger", "SELECT", "INSERT", "UPDATE", "ALTER", "TRIGGER")
		} else {
			if t.Schema != t.MetaSchema {
				add(t.Schema+".*", "schema apply: CREATE DATABASE IF NOT EXISTS", "CREATE")
			}
			add(topic, "claims, leases and requests; CREATE and TRIGGER: schema apply creates it and its request trigger", "SELECT", "INSERT", "UPDATE", "CREATE", "TRIGGER")
		}
		if c.Results.Schema != "" {
			add(results, "publish: RENAME swaps the shipped tables in (ALTER and DROP on the old name, CREATE and INSERT on the new), DROP removes the replaced ones", "SELECT", "INSERT", "CREATE", "DROP", "ALTER")
			add("*.*", "publishes run with sql_log_bin=0 so they never replicate", "BINLOG ADMIN")
		}
		if needSuper {
			out = append(out, need{privilege{"*.*", "SUPER"}, "schema apply only: creating the request trigger with binary logging on " +
				"(revoke it afterwards, or SET GLOBAL log_bin_trust_function_creators=1 and leave it out)", true})
		}
	}
	if len(c.Follow) > 0 && (c.Follower.Source == follow.SourcePrimary) == r.primary && (r.primary || r.worker) {
		add("*.*", "nonqueue follow reads the binary log over the replication protocol", "REPLICATION SLAVE")
		for _, f := range c.Follow {
			add(f.Table, "nonqueue follow and check read the followed table's columns (a lookup needs SELECT on the tables it reads too)", "SELECT")
		}
	}
	if r.worker && !c.followOnly() {
		if c.Procedure.Name != "" {
			add("PROCEDURE "+c.Procedure.Name, "the worker CALLs the procedure (it runs with its definer's privileges; an SQL SECURITY INVOKER procedure needs what it does granted too)", "EXECUTE")
		}
		if c.Results.Schema != "" {
			add(results, "FLUSH TABLES … FOR EXPORT (LOCK TABLES), CHECKSUM TABLE, DROP after shipping and of leftovers", "SELECT", "DROP", "LOCK TABLES")
		}
		add("*.*", "RELOAD: FLUSH TABLES … FOR EXPORT; BINLOG ADMIN: every session runs with sql_log_bin=0", "RELOAD", "BINLOG ADMIN")
	}
	if !r.primary && !c.followOnly() {
		add(meta, "the lag gate and the dashboard read the replica's copy of the heartbeat", "SELECT")
		add("*.*", "SHOW SLAVE STATUS (the lag gate, check, the dashboard)", "SLAVE MONITOR")
	}
	return out
}

// accountGrants is one account's needs over every server it is used on:
// GRANTs run on the primary replicate to the replicas, so an account
// used on several servers holds the union everywhere.
type accountGrants struct {
	account string
	labels  []string
	needs   []need
}

func groupAccounts(c *Config, probes []*grantProbe) []*accountGrants {
	needSuper := false
	for _, p := range probes {
		needSuper = needSuper || p.needSuper
	}
	var out []*accountGrants
	for _, p := range probes {
		var a *accountGrants
		for _, x := range out {
			if x.account == p.account {
				a = x
			}
		}
		if a == nil {
			a = &accountGrants{account: p.account}
			out = append(out, a)
		}
		a.labels = append(a.labels, p.role.label)
		for _, n := range c.neededGrants(p.role, needSuper) {
			if !slices.ContainsFunc(a.needs, func(m need) bool { return m.privilege == n.privilege }) {
				a.needs = append(a.needs, n)
			}
		}
	}
	return out
}

// statements renders the GRANTs, one per object, each after a comment
// saying why. Identifiers are quoted with backticks.
func (a *accountGrants) statements() []string {
	var objects []string
	byObject := map[string][]need{}
	for _, n := range a.needs {
		if _, ok := byObject[n.object]; !ok {
			objects = append(objects, n.object)
		}
		byObject[n.object] = append(byObject[n.object], n)
	}
	var out []string
	for _, o := range objects {
		var privs, whys []string
		for _, n := range byObject[o] {
			privs = append(privs, n.priv)
			if !slices.Contains(whys, n.why) {
				whys = append(whys, n.why)
			}
		}
		for _, w := range whys {
			out = append(out, "-- "+w)
		}
		out = append(out, fmt.Sprintf("GRANT %s ON %s TO %s;", strings.Join(privs, ", "), quoteObject(o), a.account))
	}
	return out
}

// quoteObject quotes "db.t" as `db`.`t`, "db.*" as `db`.*, keeping a
// PROCEDURE prefix and *.*.
func quoteObject(o string) string {
	kind, name := "", o
	if rest, ok := strings.CutPrefix(o, "PROCEDURE "); ok {
		kind, name = "PROCEDURE ", rest
	}
	if name == "*.*" {
		return name
	}
	db, t, _ := strings.Cut(name, ".")
	if t == "*" {
		return kind + ident.Quote(db) + ".*"
	}
	return kind + ident.Qualified(db, t)
}

// writeGrants prints the GRANT block: what to run, as an administrator
// on the primary, for every account the configuration uses.
func writeGrants(w io.Writer, accounts []*accountGrants, probes []*grantProbe) {
	fmt.Fprintln(w, grantsBegin)
	fmt.Fprintln(w, "-- The least privileges nonqueue needs. Run as an administrator on the primary:")
	fmt.Fprintln(w, "-- MariaDB replicates GRANTs to every replica. Create each account first (CREATE USER … IDENTIFIED BY …).")
	for _, p := range probes {
		if p.err != nil {
			fmt.Fprintf(w, "-- %s not reached (%v): its host part is a guess.\n", p.role.label, p.err)
		}
	}
	for _, a := range accounts {
		fmt.Fprintf(w, "-- %s, used on: %s\n", a.account, strings.Join(a.labels, ", "))
		for _, s := range a.statements() {
			fmt.Fprintln(w, s)
		}
	}
	fmt.Fprintln(w, grantsEnd)
}

// judge compares what the server granted with what the account needs:
// missing privileges are an error, more than needed a warning.
func (p *grantProbe) judge(a *accountGrants) (string, error) {
	if p.err != nil {
		return "", p.err
	}
	var missing []string
	for _, n := range a.needs {
		if !n.onlyApply && !covers(p.granted, n.privilege) {
			missing = append(missing, fmt.Sprintf("%s ON %s (%s)", n.priv, quoteObject(n.object), n.why))
		}
	}
	if len(missing) > 0 {
		return "", fmt.Errorf("%s lacks %s; see the GRANT block below", p.account, strings.Join(missing, "; "))
	}
	var needed []privilege
	for _, n := range a.needs {
		needed = append(needed, n.privilege)
	}
	extra := slices.Clone(p.others)
	for _, g := range p.granted {
		switch {
		case g.priv == "ALL PRIVILEGES":
			extra = append(extra, "ALL PRIVILEGES ON "+quoteObject(g.object))
		case covers(needed, g):
		case g.priv == "SUPER":
			extra = append(extra, "SUPER ON *.* (nonqueue needs only BINLOG ADMIN, RELOAD and SLAVE MONITOR here)")
		case g.object == "*.*":
			extra = append(extra, "global "+g.priv+" ON *.* (grant it on the schemas nonqueue uses, if at all)")
		default:
			extra = append(extra, g.priv+" ON "+quoteObject(g.object))
		}
	}
	if len(extra) > 0 {
		return "", warning{fmt.Errorf("%s has more than nonqueue needs: %s; revoke it and grant the block below", p.account, strings.Join(slices.Compact(extra), ", "))}
	}
	return fmt.Sprintf("%s has what nonqueue needs, and nothing more", p.account), nil
}

// grantChecks are check's lines for privileges, one per server; they
// use their own connections, so they report even when a worker's
// connection (with sql_log_bin=0) is refused.
func grantChecks(ctx context.Context, c *Config) ([]check, []*accountGrants, []*grantProbe) {
	probes := probeGrants(ctx, c)
	accounts := groupAccounts(c, probes)
	var checks []check
	for _, p := range probes {
		var a *accountGrants
		for _, x := range accounts {
			if x.account == p.account {
				a = x
			}
		}
		checks = append(checks, check{name: "privileges on the " + p.role.label, run: func(context.Context) (string, error) {
			return p.judge(a)
		}})
	}
	return checks, accounts, probes
}
