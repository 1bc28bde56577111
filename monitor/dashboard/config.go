package dashboard

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// Defaults for Config fields left zero.
const (
	DefaultListen     = "127.0.0.1:8080"
	DefaultRefresh    = 5 * time.Second
	DefaultCacheTTL   = 2 * time.Second
	DefaultSessionTTL = 12 * time.Hour
	// MinTokenLength is the shortest operator token accepted: a short
	// shared secret is guessable over the network.
	MinTokenLength = 16
)

// Sentinel errors of the dashboard.
var (
	// ErrConfig is wrapped by every *ConfigError.
	ErrConfig = errors.New("invalid dashboard configuration")
	// ErrLogNotAllowed: a run's log file is not under a configured log
	// directory (or there is none); it is not read.
	ErrLogNotAllowed = errors.New("log file is not under a configured log directory")
)

// ConfigError names the dashboard setting that is wrong. It never holds
// the operator token.
type ConfigError struct {
	Field string
	Err   error
}

// Error names the setting and what is wrong with it.
func (e *ConfigError) Error() string { return fmt.Sprintf("dashboard.%s: %v", e.Field, e.Err) }

// Unwrap lets errors.Is find ErrConfig and the cause.
func (e *ConfigError) Unwrap() []error { return []error{ErrConfig, e.Err} }

// Secret is a value that must never be printed or logged: it formats and
// logs as "[redacted]". Convert it to string only to compare it.
type Secret string

// String redacts, so fmt's %s, %v and %q never show the value.
func (Secret) String() string { return "[redacted]" }

// GoString redacts for %#v.
func (Secret) GoString() string { return "[redacted]" }

// MarshalText redacts for encoding/json and other text encoders.
func (Secret) MarshalText() ([]byte, error) { return []byte("[redacted]"), nil }

// LogValue redacts for log/slog.
func (Secret) LogValue() slog.Value { return slog.StringValue("[redacted]") }

// Config is how the dashboard serves.
type Config struct {
	// Listen is the TCP address; default 127.0.0.1:8080 (loopback: put a
	// TLS proxy in front to expose it).
	Listen string
	// Prefix mounts every page under a path such as "/nonqueue" (no
	// trailing slash), for a reverse proxy that routes by path; default
	// none.
	Prefix string
	// OperatorToken enables the actions; empty disables them. At least
	// MinTokenLength characters.
	OperatorToken Secret
	// LogDirs are the absolute directories whose run logs the topic page
	// may show; a run's log_path outside them is never read.
	LogDirs []string
	// Refresh is how often pages reload themselves; default 5s, at least
	// 1s.
	Refresh time.Duration
	// CacheTTL is how long a computed overview is reused; default 2s.
	CacheTTL time.Duration
	// Origin is the dashboard's public origin ("https://ops.example.com")
	// when a proxy changes the Host header; POSTs whose Origin differs
	// are refused. Empty: the request's own Host must match.
	Origin string
	// SessionTTL is how long an operator stays logged in; default 12h.
	SessionTTL time.Duration
	// TrustedProxies are the addresses or CIDR ranges of reverse proxies
	// whose X-Forwarded-For header names the real client, for the
	// per-client login throttle. Empty (default): the header is ignored
	// and the throttle applies to the connection's remote address, so
	// behind a proxy all clients share it.
	TrustedProxies []string
}

// WithDefaults returns c with zero fields set to their defaults and the
// prefix and log directories cleaned.
func (c Config) WithDefaults() Config {
	c.Listen = cmp.Or(c.Listen, DefaultListen)
	c.Prefix = strings.TrimRight(c.Prefix, "/")
	c.Refresh = cmp.Or(c.Refresh, DefaultRefresh)
	c.CacheTTL = cmp.Or(c.CacheTTL, DefaultCacheTTL)
	c.SessionTTL = cmp.Or(c.SessionTTL, DefaultSessionTTL)
	dirs := make([]string, 0, len(c.LogDirs))
	for _, d := range c.LogDirs {
		if d != "" {
			dirs = append(dirs, filepath.Clean(d))
		}
	}
	c.LogDirs = dirs
	return c
}

var prefixPattern = regexp.MustCompile(`^(/[A-Za-z0-9._~-]+)+$`)

// Validate checks c as given (call WithDefaults first). Errors are
// *ConfigError wrapping ErrConfig.
func (c Config) Validate() error {
	if c.Prefix != "" && !prefixPattern.MatchString(c.Prefix) {
		return &ConfigError{Field: "prefix", Err: fmt.Errorf("%q: want /segment[/segment…] of letters, digits, . _ ~ -", c.Prefix)}
	}
	if n := len(c.OperatorToken); n > 0 && n < MinTokenLength {
		return &ConfigError{Field: "operator_token", Err: fmt.Errorf("the token has %d characters, want at least %d", n, MinTokenLength)}
	}
	for _, d := range c.LogDirs {
		if !filepath.IsAbs(d) {
			return &ConfigError{Field: "log_dirs", Err: fmt.Errorf("%q is not an absolute path", d)}
		}
	}
	if c.Refresh < time.Second {
		return &ConfigError{Field: "refresh", Err: fmt.Errorf("%v is under 1s", c.Refresh)}
	}
	if c.CacheTTL < 0 || c.SessionTTL < time.Minute {
		return &ConfigError{Field: "session_ttl", Err: fmt.Errorf("cache ttl %v must not be negative, session ttl %v at least 1m", c.CacheTTL, c.SessionTTL)}
	}
	if _, err := c.trustedProxies(); err != nil {
		return &ConfigError{Field: "trusted_proxies", Err: err}
	}
	if c.Origin != "" {
		u, err := url.Parse(c.Origin)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") {
			return &ConfigError{Field: "origin", Err: fmt.Errorf("%q: want scheme://host[:port]", c.Origin)}
		}
	}
	return nil
}

// trustedProxies parses TrustedProxies: each an IP address or a CIDR range.
func (c Config) trustedProxies() ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, v := range c.TrustedProxies {
		v = strings.TrimSpace(v)
		if p, err := netip.ParsePrefix(v); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(v)
		if err != nil {
			return nil, fmt.Errorf("%q: want an IP address or a CIDR range such as 10.0.0.0/8", v)
		}
		a = a.Unmap()
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}
