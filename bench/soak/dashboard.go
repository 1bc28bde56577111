package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"text/template"
	"time"

	"github.com/nonqueue/nonqueue/internal/child"
	"github.com/nonqueue/nonqueue/internal/sandbox"
)

// operatorEnv holds the dashboard's operator token for the soak's
// `nonqueue dashboard` child (it inherits the soak's environment).
const operatorEnv = "NQSOAK_OPERATOR_TOKEN"

// dashboardConfig is the dashboard's configuration: the sandbox's own
// connections (an operator's, not through the workers' network), the
// mapping, and an operator token.
var dashboardConfig = template.Must(template.New("dash").Parse(`# nonqueue soak dashboard; written by nqsoak.
` + sandbox.ConnectionsTOML + `
` + topicsTOML + `
[procedure]
name = "` + procName + `"

[results]
schema = "influencer"
tables = ["Dynamics_{id}", "Post_{id}"]

[dashboard]
operator_token_env = "` + operatorEnv + `"
refresh = "60s"

` + sandbox.SSHTOML))

// operator is an operator logged in to the soak's dashboard: releases go
// through its HTTP forms, as a browser's would (the login's CSRF cookie,
// the session's CSRF token read from the topic page, the release form's
// claim as the page showed it).
type operator struct {
	base   string
	client *http.Client
	proc   *child.Process
}

var (
	csrfField    = regexp.MustCompile(`name="csrf" value="([^"]+)"`)
	releaseField = regexp.MustCompile(`name="instance" value="(\d+)"><input type="hidden" name="token" value="(\d+)"`)
)

// startDashboard starts `nonqueue dashboard` on a free loopback port and
// logs in as the operator "soak".
func (s *soak) startDashboard(ctx context.Context) (*operator, error) {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	token := hex.EncodeToString(b)
	if err := os.Setenv(operatorEnv, token); err != nil {
		return nil, err
	}
	path := filepath.Join(s.dir, "soak", "dashboard.toml")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, err
	}
	err = dashboardConfig.Execute(f, map[string]any{"SB": s.sb, "Replica": s.sb.Replicas[0],
		"Lease": s.opt.Lease.String(), "MaxAttempts": s.opt.MaxAttempts})
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("write %s: %w", path, err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := ln.Addr().String()
	ln.Close()
	p, err := s.kids.Start("nonqueue dashboard", filepath.Join(s.dir, "soak", "dashboard.log"), false,
		s.nonqueue, "dashboard", "--config", path, "--listen", addr)
	if err != nil {
		return nil, err
	}
	jar, _ := cookiejar.New(nil)
	o := &operator{base: "http://" + addr, proc: p, client: &http.Client{Jar: jar, Timeout: 30 * time.Second}}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := o.client.Get(o.base + "/healthz")
		if err == nil {
			resp.Body.Close()
			break
		}
		if p.Exited() || time.Now().After(deadline) {
			return nil, fmt.Errorf("nonqueue dashboard did not come up on %s: %v%s", addr, err, child.LogTail(p.LogPath))
		}
		if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
			return nil, err
		}
	}
	// The login form: its CSRF token is the cookie the page sets.
	page, err := o.get(ctx, "/")
	if err != nil {
		return nil, err
	}
	m := csrfField.FindStringSubmatch(page)
	if m == nil {
		return nil, errors.New("dashboard: no CSRF token in the login form")
	}
	body, code, err := o.post(ctx, "/login", url.Values{"csrf": {m[1]}, "name": {"soak"}, "token": {token}, "next": {"/"}})
	if err != nil {
		return nil, err
	}
	if code != http.StatusOK || !strings.Contains(body, `id="operator"`) {
		return nil, fmt.Errorf("dashboard: login refused (%d): %s", code, tail(body))
	}
	return o, nil
}

func (o *operator) get(ctx context.Context, path string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, o.base+path, nil)
	if err != nil {
		return "", err
	}
	resp, err := o.client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s: %s", path, resp.Status, tail(string(b)))
	}
	return string(b), nil
}

// post sends a form (same origin, as the browser does) and follows the
// redirect; it returns the final page and status.
func (o *operator) post(ctx context.Context, path string, form url.Values) (string, int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, o.base+path, strings.NewReader(form.Encode()))
	if err != nil {
		return "", 0, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", o.base)
	resp, err := o.client.Do(req)
	if err != nil {
		return "", 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), resp.StatusCode, err
}

// release opens topic id's page and submits its release form, the claim
// it shows. It reports false when the page shows no running claim or the
// claim changed before the form was sent (409): nothing was released.
func (o *operator) release(ctx context.Context, id int64) (released bool, note string, err error) {
	page, err := o.get(ctx, "/topics/"+strconv.FormatInt(id, 10))
	if err != nil {
		return false, "", err
	}
	m := releaseField.FindStringSubmatch(page)
	c := csrfField.FindStringSubmatch(page)
	if m == nil || c == nil {
		return false, "the topic page shows no running claim", nil
	}
	body, code, err := o.post(ctx, "/actions/release", url.Values{"csrf": {c[1]}, "id": {strconv.FormatInt(id, 10)},
		"instance": {m[1]}, "token": {m[2]}, "reason": {"soak fault"}})
	if err != nil {
		return false, "", err
	}
	switch code {
	case http.StatusOK:
		return true, fmt.Sprintf("released claim %s of instance %s from the dashboard", m[2], m[1]), nil
	case http.StatusConflict:
		return false, fmt.Sprintf("claim %s of instance %s changed before the form was sent (409)", m[2], m[1]), nil
	}
	return false, "", fmt.Errorf("POST /actions/release: %d: %s", code, tail(body))
}
