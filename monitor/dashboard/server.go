package dashboard

import (
	"bytes"
	"context"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/nonqueue/nonqueue/monitor"
)

//go:embed templates/*.html static/*
var assets embed.FS

// Server serves the dashboard. Build it with New; serve it with Start and
// Stop, or mount Handler in a server of your own.
type Server struct {
	cfg      Config
	src      *Sources
	log      *slog.Logger
	pages    map[string]*template.Template
	sessions *sessions
	trusted  []netip.Prefix // Config.TrustedProxies, parsed
	summary  cache[*Summary]
	paused   cache[[]monitor.Pause] // for every page's banner
	handler  http.Handler

	mu   sync.Mutex // guards srv, ln, done
	srv  *http.Server
	ln   net.Listener
	done chan error
}

// New validates cfg (defaults filled) and builds the handler. logger may
// be nil (discard).
func New(cfg Config, src *Sources, logger *slog.Logger) (*Server, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := src.check(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, src: src, log: logger, sessions: newSessions(cfg.SessionTTL)}
	s.summary.ttl = cfg.CacheTTL
	s.paused.ttl = cfg.CacheTTL
	s.trusted, _ = cfg.trustedProxies() // checked by Validate
	pages, err := parsePages()
	if err != nil {
		return nil, err
	}
	s.pages = pages
	s.handler = s.routes()
	return s, nil
}

// Config returns the configuration in force, defaults filled.
func (s *Server) Config() Config { return s.cfg }

// Handler returns the dashboard's handler, mounted under Config.Prefix.
func (s *Server) Handler() http.Handler { return s.handler }

// Start listens on Config.Listen and serves in the background; it returns
// once the listener is open (so Addr is known) or with the listen error.
// Starting a started Server is an error.
func (s *Server) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv != nil {
		return errors.New("dashboard already started")
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("dashboard: listen on %s: %w", s.cfg.Listen, err)
	}
	s.ln = ln
	s.srv = &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	s.done = make(chan error, 1)
	srv, done := s.srv, s.done
	go func() {
		err := srv.Serve(ln)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		done <- err
	}()
	if tcp, ok := ln.Addr().(*net.TCPAddr); ok && !tcp.IP.IsLoopback() {
		s.log.WarnContext(ctx, "dashboard served on a non-loopback address: the operator token and session cookies cross the network unencrypted unless a TLS proxy is in front; listen on a loopback address behind one", "addr", ln.Addr().String())
	}
	s.log.InfoContext(ctx, "dashboard listening", "url", "http://"+ln.Addr().String()+s.cfg.Prefix+"/",
		"actions", s.actionsEnabled())
	return nil
}

// Addr is the address listened on (useful with port 0), "" before Start.
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return ""
	}
	return s.ln.Addr().String()
}

// Stop stops accepting, waits for requests in flight until ctx is done,
// then closes what is left. It is idempotent and safe before Start.
func (s *Server) Stop(ctx context.Context) error {
	s.mu.Lock()
	srv, done := s.srv, s.done
	s.srv, s.ln, s.done = nil, nil, nil
	s.mu.Unlock()
	if srv == nil {
		return nil
	}
	err := srv.Shutdown(ctx)
	if err != nil {
		srv.Close()
	}
	if serr := <-done; err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("stop dashboard: %w", err)
	}
	return nil
}

func (s *Server) actionsEnabled() bool { return s.cfg.OperatorToken != "" }

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	static, _ := fs.Sub(assets, "static")
	mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(static)))
	mux.HandleFunc("GET /healthz", s.healthz)
	if s.src.Metrics != nil {
		mux.Handle("GET /metrics", s.src.Metrics)
	}
	mux.HandleFunc("GET /{$}", s.overviewPage)
	mux.HandleFunc("GET /api/summary", s.summaryJSON)
	mux.HandleFunc("GET /replicas", s.replicasPage)
	mux.HandleFunc("GET /topics", s.topicsPage)
	mux.HandleFunc("GET /topics/{id}", s.topicPage)
	mux.HandleFunc("GET /runs/{id}/log", s.runLogPage)
	mux.HandleFunc("GET /failures", s.failuresPage)
	mux.HandleFunc("POST /login", s.login)
	mux.HandleFunc("POST /logout", s.logout)
	mux.HandleFunc("POST /actions/request", s.action(s.actRequest))
	mux.HandleFunc("POST /actions/request-matching", s.action(s.actRequestMatching))
	mux.HandleFunc("POST /actions/priority", s.action(s.actPriority))
	mux.HandleFunc("POST /actions/release", s.action(s.actRelease))
	mux.HandleFunc("POST /actions/park", s.action(s.actPark))
	mux.HandleFunc("POST /actions/unpark", s.action(s.actUnpark))
	mux.HandleFunc("POST /actions/pause", s.action(s.actPause))
	mux.HandleFunc("POST /actions/resume", s.action(s.actResume))
	// The catch-all answers 404, or 405 when the path exists for another
	// method (the mux would route a wrong method here, not to its 405).
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		var allow []string
		for _, m := range []string{http.MethodGet, http.MethodPost} {
			r2 := r.Clone(r.Context())
			r2.Method = m
			if _, pat := mux.Handler(r2); m != r.Method && pat != "/" && pat != "" {
				allow = append(allow, m)
			}
		}
		if len(allow) > 0 {
			w.Header().Set("Allow", strings.Join(allow, ", "))
			s.fail(w, r, http.StatusMethodNotAllowed, fmt.Sprintf("%s %s: use %s", r.Method, r.URL.Path, strings.Join(allow, " or ")))
			return
		}
		s.fail(w, r, http.StatusNotFound, fmt.Sprintf("no page at %s", r.URL.Path))
	})
	var h http.Handler = mux
	if p := s.cfg.Prefix; p != "" {
		inner := http.StripPrefix(p, mux)
		h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			switch {
			case r.URL.Path == p:
				http.Redirect(w, r, p+"/", http.StatusMovedPermanently)
			case strings.HasPrefix(r.URL.Path, p+"/"):
				inner.ServeHTTP(w, r)
			default:
				http.NotFound(w, r)
			}
		})
	}
	return securityHeaders(h)
}

// securityHeaders: no framing, no sniffing, scripts and styles from this
// origin only (the pages have no inline script or style).
func securityHeaders(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("X-Frame-Options", "DENY")
		hd.Set("Referrer-Policy", "same-origin")
		h.ServeHTTP(w, r)
	})
}

// pausesTimeout bounds the read of the pauses for a page's banner.
const pausesTimeout = 2 * time.Second

// healthz answers 200 when the primary answers a ping within 2s, 503
// otherwise.
func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if err := s.src.History.Primary.PingContext(ctx); err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(w, "primary unreachable: %v\n", err)
		return
	}
	fmt.Fprintln(w, "ok")
}

// view is what every page template gets.
type view struct {
	Title          string
	Nav            string
	Base           string // the prefix; links are {{.Base}}/…
	CSRF           string
	Operator       string
	ActionsEnabled bool
	RefreshMS      int64
	RefreshS       int64
	Flash          string
	Path           string // the request's path and query, for login's return
	// Pauses are the pauses in force, for the banner every page shows
	// (none when they cannot be read).
	Pauses []monitor.Pause
	Data   any
}

func (s *Server) newView(w http.ResponseWriter, r *http.Request, title, nav string, data any) *view {
	v := &view{Title: title, Nav: nav, Base: s.cfg.Prefix, ActionsEnabled: s.actionsEnabled(),
		RefreshMS: s.cfg.Refresh.Milliseconds(), RefreshS: int64(s.cfg.Refresh.Seconds()), Data: data, Path: s.cfg.Prefix + r.URL.RequestURI()}
	if v.ActionsEnabled {
		if _, ss := s.session(r); ss != nil {
			v.CSRF, v.Operator = ss.csrf, ss.operator
		} else {
			v.CSRF = s.loginCSRF(w, r)
		}
	}
	v.Flash = flashText(r.URL.Query().Get("msg"), r.URL.Query().Get("n"))
	v.Pauses, _ = s.paused.get(r.Context(), pausesTimeout, s.src.pauses().Active)
	return v
}

// render executes a page into a buffer first, so a template error becomes
// a clean 500 instead of half a page.
func (s *Server) render(w http.ResponseWriter, r *http.Request, status int, page string, v *view) {
	t := s.pages[page]
	var buf bytes.Buffer
	if t == nil {
		s.log.ErrorContext(r.Context(), "dashboard: no such page template", "page", page)
		http.Error(w, "internal error: no template "+page, http.StatusInternalServerError)
		return
	}
	if err := t.ExecuteTemplate(&buf, "layout", v); err != nil {
		s.log.ErrorContext(r.Context(), "dashboard: render page", "page", page, "err", err)
		http.Error(w, "internal error rendering the page", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	w.Write(buf.Bytes())
}

// fail answers with an error page saying what was wrong.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, status int, msg string) {
	if status >= 500 {
		s.log.WarnContext(r.Context(), "dashboard request failed", "path", r.URL.Path, "status", status, "err", msg)
	}
	s.render(w, r, status, "error.html", s.newView(w, r, http.StatusText(status), "", map[string]any{
		"Status": status, "StatusText": http.StatusText(status), "Message": msg,
	}))
}

// cache computes a value at most once per ttl; concurrent callers wait for
// the computation in flight instead of starting their own.
type cache[T any] struct {
	ttl time.Duration
	mu  sync.Mutex
	val T
	at  time.Time
	ok  bool
}

// invalidate makes the next get compute afresh (after an action that
// changes what the value shows).
func (c *cache[T]) invalidate() {
	c.mu.Lock()
	c.ok = false
	c.mu.Unlock()
}

// get returns the cached value when fresh, else computes it. The
// computation runs detached from the caller's cancellation (other callers
// wait for it) but bounded by timeout.
func (c *cache[T]) get(ctx context.Context, timeout time.Duration, compute func(context.Context) (T, error)) (T, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ok && time.Since(c.at) < c.ttl {
		return c.val, nil
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	defer cancel()
	v, err := compute(cctx)
	if err != nil {
		var zero T
		return zero, err
	}
	c.val, c.at, c.ok = v, time.Now(), true
	return v, nil
}
