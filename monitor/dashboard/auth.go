package dashboard

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"net/http"
	"net/netip"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"time"
)

// Cookie names.
const (
	sessionCookie = "nq_session"
	csrfCookie    = "nq_csrf" // double-submit token of the login form
	maxSessions   = 1000
	// maxLoginFailures per client within loginWindow lock that client out
	// for loginWindow: enough for typos, too few to guess a token of
	// MinTokenLength characters. Other clients are not affected.
	maxLoginFailures = 20
	loginWindow      = time.Minute
	// maxThrottledClients bounds the failure records kept (about 100
	// bytes each). When that many clients have failed within the window,
	// further new clients share one record, so a flood from many
	// addresses costs bounded memory and still gets throttled.
	maxThrottledClients = 10_000
)

// failureWindow counts one client's failed logins.
type failureWindow struct {
	start       time.Time // first failure of the current window
	n           int
	lockedUntil time.Time
}

// session is one logged-in operator.
type session struct {
	csrf     string
	operator string
	expires  time.Time
}

// sessions are kept in memory: a restart logs everyone out, which is
// fine for an operator console.
type sessions struct {
	mu       sync.Mutex
	ttl      time.Duration
	byID     map[string]*session
	failures map[string]*failureWindow // recent failed logins by client (clientKey)
	overflow failureWindow             // shared once failures holds maxThrottledClients
	pruned   time.Time                 // last sweep of failures
}

func newSessions(ttl time.Duration) *sessions {
	return &sessions{ttl: ttl, byID: map[string]*session{}, failures: map[string]*failureWindow{}}
}

func randomToken() string {
	var b [32]byte
	rand.Read(b[:]) // never fails (crypto/rand panics instead)
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// create starts a session and returns its id.
func (s *sessions) create(operator string, now time.Time) (string, *session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, ss := range s.byID {
		if now.After(ss.expires) {
			delete(s.byID, id)
		}
	}
	for len(s.byID) >= maxSessions { // bounded: drop the one closest to expiry
		var oldest string
		for id, ss := range s.byID {
			if oldest == "" || ss.expires.Before(s.byID[oldest].expires) {
				oldest = id
			}
		}
		delete(s.byID, oldest)
	}
	id := randomToken()
	ss := &session{csrf: randomToken(), operator: operator, expires: now.Add(s.ttl)}
	s.byID[id] = ss
	return id, ss
}

func (s *sessions) get(id string, now time.Time) *session {
	if id == "" {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	ss := s.byID[id]
	if ss == nil || now.After(ss.expires) {
		delete(s.byID, id)
		return nil
	}
	return ss
}

func (s *sessions) drop(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.byID, id)
}

// failed records a failed login of client; its maxLoginFailures-th
// failure within loginWindow locks it out for loginWindow.
func (s *sessions) failed(client string, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	w := s.failures[client]
	if w == nil {
		if len(s.failures) >= maxThrottledClients && now.Sub(s.pruned) >= time.Second {
			s.pruned = now
			for k, v := range s.failures {
				if now.Sub(v.start) >= loginWindow && !now.Before(v.lockedUntil) {
					delete(s.failures, k)
				}
			}
		}
		if len(s.failures) < maxThrottledClients {
			w = &failureWindow{}
			s.failures[client] = w
		} else {
			w = &s.overflow
		}
	}
	if now.Sub(w.start) >= loginWindow {
		w.start, w.n = now, 0
	}
	w.n++
	if w.n >= maxLoginFailures {
		w.lockedUntil = now.Add(loginWindow)
	}
}

// throttled reports whether client is locked out. A client with no record
// while the records are full is judged by the shared overflow record.
func (s *sessions) throttled(client string, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	w := s.failures[client]
	if w == nil {
		if len(s.failures) < maxThrottledClients {
			return false
		}
		w = &s.overflow
	}
	return now.Before(w.lockedUntil)
}

// loggedIn forgets client's failures.
func (s *sessions) loggedIn(client string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.failures, client)
}

// clientKey names the client a login throttle applies to: the remote IP
// address, an IPv6 one by its /64 (what one host or site usually gets).
// When the connection comes from a trusted proxy (Config.TrustedProxies),
// the address is the right-most X-Forwarded-For entry that is not itself
// a trusted proxy; without trusted proxies the header is ignored, since
// any client can send it.
func (s *Server) clientKey(r *http.Request) string {
	ip, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	addr := ip.Addr().Unmap()
	if s.trustedProxy(addr) {
		fwd := strings.Split(strings.Join(r.Header.Values("X-Forwarded-For"), ","), ",")
		for i := len(fwd) - 1; i >= 0; i-- {
			a, err := netip.ParseAddr(strings.TrimSpace(fwd[i]))
			if err != nil {
				break
			}
			addr = a.Unmap()
			if !s.trustedProxy(addr) {
				break
			}
		}
	}
	if addr.Is6() {
		p, _ := addr.Prefix(64)
		return p.String()
	}
	return addr.String()
}

func (s *Server) trustedProxy(a netip.Addr) bool {
	for _, p := range s.trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// equalSecret compares in constant time, also for different lengths.
func equalSecret(a, b string) bool {
	ha, hb := sha256.Sum256([]byte(a)), sha256.Sum256([]byte(b))
	return subtle.ConstantTimeCompare(ha[:], hb[:]) == 1
}

// sameOrigin checks the Origin header (or, without it, the Referer's
// origin) against Config.Origin or the request's Host. A request with
// neither header (not a browser) passes: it still needs the CSRF token.
func (s *Server) sameOrigin(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		ref := r.Header.Get("Referer")
		if ref == "" {
			return true
		}
		u, err := url.Parse(ref)
		if err != nil {
			return false
		}
		origin = u.Scheme + "://" + u.Host
	}
	if s.cfg.Origin != "" {
		return strings.TrimSuffix(s.cfg.Origin, "/") == origin
	}
	u, err := url.Parse(origin)
	return err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host == r.Host
}

func (s *Server) secureCookies(r *http.Request) bool {
	return r.TLS != nil || strings.HasPrefix(s.cfg.Origin, "https://")
}

func (s *Server) cookie(r *http.Request, name, value string, maxAge int) *http.Cookie {
	return &http.Cookie{
		Name: name, Value: value, Path: s.cfg.Prefix + "/", MaxAge: maxAge,
		HttpOnly: true, Secure: s.secureCookies(r), SameSite: http.SameSiteStrictMode,
	}
}

// session returns the request's live session, nil when none.
func (s *Server) session(r *http.Request) (string, *session) {
	c, err := r.Cookie(sessionCookie)
	if err != nil {
		return "", nil
	}
	return c.Value, s.sessions.get(c.Value, time.Now())
}

// loginCSRF returns the login form's double-submit token, setting its
// cookie when the browser has none yet.
func (s *Server) loginCSRF(w http.ResponseWriter, r *http.Request) string {
	if c, err := r.Cookie(csrfCookie); err == nil && len(c.Value) >= 32 {
		return c.Value
	}
	v := randomToken()
	http.SetCookie(w, s.cookie(r, csrfCookie, v, 0))
	return v
}

var operatorName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9 ._@-]{0,63}$`)
