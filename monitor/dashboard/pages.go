package dashboard

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/nonqueue/nonqueue/internal/format"
	"github.com/nonqueue/nonqueue/monitor"
	"github.com/nonqueue/nonqueue/queue"
)

// summaryTimeout bounds one overview computation.
const summaryTimeout = 30 * time.Second

func (s *Server) cachedSummary(ctx context.Context) (*Summary, error) {
	return s.summary.get(ctx, summaryTimeout, s.src.Summary)
}

func (s *Server) overviewPage(w http.ResponseWriter, r *http.Request) {
	sum, err := s.cachedSummary(r.Context())
	if err != nil {
		s.fail(w, r, http.StatusInternalServerError, err.Error())
		return
	}
	s.render(w, r, http.StatusOK, "overview.html", s.newView(w, r, "Overview", "overview", sum))
}

// summaryJSON serves the overview for scripts (the same data as
// `nonqueue status --json`).
func (s *Server) summaryJSON(w http.ResponseWriter, r *http.Request) {
	sum, err := s.cachedSummary(r.Context())
	if err != nil {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusInternalServerError)
		json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	json.NewEncoder(w).Encode(sum)
}

func (s *Server) replicasPage(w http.ResponseWriter, r *http.Request) {
	v, err := s.src.ReplicaGroups(r.Context())
	if err != nil {
		s.fail(w, r, http.StatusInternalServerError, err.Error())
		return
	}
	s.render(w, r, http.StatusOK, "replicas.html", s.newView(w, r, "Replicas and instances", "replicas", v))
}

// topicsView is the topic list page.
type topicsView struct {
	Filter  filterForm
	Page    *queue.TopicPage
	Last    map[int64]monitor.RunRecord
	States  []queue.TopicState
	NextURL string
}

// filterForm is a TopicFilter as the form shows it.
type filterForm struct {
	ID, State, MinPriority, MaxPriority string
}

// parseFilter reads a topic filter from form values; errors are for the
// user (400).
func parseFilter(v url.Values) (*queue.TopicFilter, filterForm, error) {
	ff := filterForm{ID: strings.TrimSpace(v.Get("id")), State: v.Get("state"),
		MinPriority: strings.TrimSpace(v.Get("min_priority")), MaxPriority: strings.TrimSpace(v.Get("max_priority"))}
	f := &queue.TopicFilter{}
	if ff.ID != "" {
		id, err := parseID("topic id", ff.ID)
		if err != nil {
			return nil, ff, err
		}
		f.ID = id
	}
	if ff.State != "" {
		st, err := queue.ParseTopicState(ff.State)
		if err != nil {
			return nil, ff, err
		}
		f.State = st
	}
	for _, p := range []struct {
		name, val string
		dst       **int64
	}{{"min priority", ff.MinPriority, &f.MinPriority}, {"max priority", ff.MaxPriority, &f.MaxPriority}} {
		if p.val == "" {
			continue
		}
		n, err := strconv.ParseInt(p.val, 10, 64)
		if err != nil {
			return nil, ff, fmt.Errorf("%s %q: not an integer", p.name, p.val)
		}
		*p.dst = &n
	}
	if after := v.Get("after"); after != "" {
		id, err := strconv.ParseInt(after, 10, 64)
		if err != nil {
			return nil, ff, fmt.Errorf("after %q: not an integer", after)
		}
		f.AfterID = id
	}
	return f, ff, f.Validate()
}

func parseID(what, s string) (int64, error) {
	id, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil || id <= 0 {
		return 0, fmt.Errorf("%s %q: want a positive integer", what, s)
	}
	return id, nil
}

func (s *Server) topicsPage(w http.ResponseWriter, r *http.Request) {
	f, ff, err := parseFilter(r.URL.Query())
	if err != nil {
		s.fail(w, r, http.StatusBadRequest, err.Error())
		return
	}
	page, err := s.src.Queue.Topics(r.Context(), f)
	if err != nil {
		s.fail(w, r, http.StatusInternalServerError, err.Error())
		return
	}
	ids := make([]int64, len(page.Topics))
	for i, t := range page.Topics {
		ids[i] = t.ID
	}
	last, err := s.src.History.LastRuns(r.Context(), ids)
	if err != nil {
		s.fail(w, r, http.StatusInternalServerError, err.Error())
		return
	}
	tv := &topicsView{Filter: ff, Page: page, Last: last, States: queue.TopicStates()}
	if page.Next != 0 {
		q := r.URL.Query()
		q.Set("after", strconv.FormatInt(page.Next, 10))
		tv.NextURL = s.cfg.Prefix + "/topics?" + q.Encode()
	}
	s.render(w, r, http.StatusOK, "topics.html", s.newView(w, r, "Topics", "topics", tv))
}

// topicView is the topic page.
type topicView struct {
	Topic *queue.TopicRow
	Runs  []monitor.RunRecord
}

func (s *Server) topicPage(w http.ResponseWriter, r *http.Request) {
	id, err := parseID("topic id", r.PathValue("id"))
	if err != nil {
		s.fail(w, r, http.StatusBadRequest, err.Error())
		return
	}
	t, err := s.src.Queue.Topic(r.Context(), id)
	if errors.Is(err, queue.ErrTopicNotFound) {
		s.fail(w, r, http.StatusNotFound, fmt.Sprintf("topic %d is not in the topic table", id))
		return
	}
	if err != nil {
		s.fail(w, r, http.StatusInternalServerError, err.Error())
		return
	}
	runs, err := s.src.History.TopicRuns(r.Context(), id, 50)
	if err != nil {
		s.fail(w, r, http.StatusInternalServerError, err.Error())
		return
	}
	s.render(w, r, http.StatusOK, "topic.html", s.newView(w, r, fmt.Sprintf("Topic %d", id), "topics", &topicView{Topic: t, Runs: runs}))
}

// logView is the run log page.
type logView struct {
	Run       *monitor.RunRecord
	Text      string
	Truncated bool
	Size      int64
	// Rewritten is the claim token of the later run the file now holds
	// (a topic's log is rewritten by each run); 0 when it is this run's.
	Rewritten uint64
}

func (s *Server) runLogPage(w http.ResponseWriter, r *http.Request) {
	id, err := parseID("run id", r.PathValue("id"))
	if err != nil {
		s.fail(w, r, http.StatusBadRequest, err.Error())
		return
	}
	run, err := s.src.History.Run(r.Context(), id)
	if errors.Is(err, monitor.ErrRunNotFound) {
		s.fail(w, r, http.StatusNotFound, fmt.Sprintf("run %d is not in the run history", id))
		return
	}
	if err != nil {
		s.fail(w, r, http.StatusInternalServerError, err.Error())
		return
	}
	if run.LogPath == "" {
		s.fail(w, r, http.StatusNotFound, fmt.Sprintf("run %d recorded no log file", id))
		return
	}
	lt, err := readLog(s.cfg.LogDirs, run.LogPath, maxLogBytes)
	switch {
	case errors.Is(err, ErrLogNotAllowed):
		s.fail(w, r, http.StatusForbidden, fmt.Sprintf("run %d's log %q: %v (dashboard log_dirs: %v)", id, run.LogPath, err, s.cfg.LogDirs))
		return
	case errors.Is(err, fs.ErrNotExist):
		s.fail(w, r, http.StatusNotFound, fmt.Sprintf("run %d's log %q is not on this host (logs stay on the worker's host)", id, run.LogPath))
		return
	case err != nil:
		s.fail(w, r, http.StatusInternalServerError, err.Error())
		return
	}
	s.render(w, r, http.StatusOK, "log.html", s.newView(w, r, fmt.Sprintf("Log of run %d", id), "topics",
		&logView{Run: run, Text: lt.Text, Truncated: lt.Truncated, Size: lt.Size, Rewritten: rewrittenBy(lt.First, run.ClaimToken)}))
}

// rewrittenBy is the claim token named in a log's first line when it is
// not the run's own: a later run of the topic rewrote the file.
func rewrittenBy(first string, own uint64) uint64 {
	if tok := loggedClaimToken(first); tok != 0 && tok != own {
		return tok
	}
	return 0
}

// failuresView is the failures page.
type failuresView struct {
	Window string
	Groups []FailureGroup
	Runs   []monitor.RunRecord
	Limit  int
}

const failuresScanned = 2000

func (s *Server) failuresPage(w http.ResponseWriter, r *http.Request) {
	window := 24 * time.Hour
	if v := r.URL.Query().Get("window"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < time.Minute || d > 31*24*time.Hour {
			s.fail(w, r, http.StatusBadRequest, fmt.Sprintf("window %q: want a duration from 1m to 744h, such as 1h or 24h", v))
			return
		}
		window = d
	}
	runs, err := s.src.History.Failures(r.Context(), window, failuresScanned)
	if err != nil {
		s.fail(w, r, http.StatusInternalServerError, err.Error())
		return
	}
	fv := &failuresView{Window: fmtDuration(window), Groups: groupFailures(runs), Runs: runs[:min(len(runs), 100)], Limit: failuresScanned}
	s.render(w, r, http.StatusOK, "failures.html", s.newView(w, r, "Failures", "failures", fv))
}

// flash messages by code: redirects carry a code, never free text.
func flashText(code, n string) string {
	count, _ := strconv.Atoi(n)
	switch code {
	case "":
		return ""
	case "requested":
		return "Recalc requested."
	case "requested-matching":
		return fmt.Sprintf("Recalc requested for %d topics.", count)
	case "priority":
		return "Priority changed."
	case "released":
		return "Claim released; the topic is due again."
	case "parked":
		return "Topic parked."
	case "unparked":
		return "Topic unparked."
	case "not-parked":
		return "The topic was not parked; nothing changed."
	case "paused":
		return "Paused: workers claim nothing the pause covers within one sample interval; runs in flight finish."
	case "resumed":
		return "Pause ended; workers claim again within one sample interval unless another pause covers them."
	case "not-paused":
		return "That pause was no longer in force; nothing changed."
	case "login":
		return "Logged in."
	case "logout":
		return "Logged out."
	}
	return ""
}

func parsePages() (map[string]*template.Template, error) {
	funcs := template.FuncMap{
		"dur":       fmtDuration,
		"ago":       func(d time.Duration) string { return fmtDuration(d) + " ago" },
		"num":       format.Thousands,
		"bytes":     format.Bytes,
		"pct":       func(f float64) string { return strconv.FormatFloat(100*f, 'f', 1, 64) + "%" },
		"scope":     scopeName,
		"clock":     func(t time.Time) string { return fmtClock(t) },
		"stateOf":   func(m map[queue.TopicState]int64, s queue.TopicState) int64 { return m[s] },
		"states":    queue.TopicStates,
		"hourChart": func(t *monitor.Throughput) template.HTML { return throughputChart(t, "runs per minute, last hour") },
		"dayChart": func(t *monitor.Throughput) template.HTML {
			return throughputChart(t, "runs per minute, last 24 hours (15-minute buckets)")
		},
		"refresh": refreshText,
		"due": func(t queue.TopicRow) string {
			if t.DueIn <= 0 {
				return "due " + fmtDuration(-t.DueIn) + " ago"
			}
			return "in " + fmtDuration(t.DueIn)
		},
		"add":   func(a, b int64) int64 { return a + b },
		"plus1": func(i int) int { return i + 1 },
		"stale": func(d, lease time.Duration) bool { return d > lease },
	}
	entries, err := fs.Glob(assets, "templates/*.html")
	if err != nil {
		return nil, err
	}
	pages := map[string]*template.Template{}
	for _, e := range entries {
		name := strings.TrimPrefix(e, "templates/")
		if name == "layout.html" {
			continue
		}
		t, err := template.New(name).Funcs(funcs).ParseFS(assets, "templates/layout.html", e)
		if err != nil {
			return nil, fmt.Errorf("dashboard: parse template %s: %w", name, err)
		}
		pages[name] = t
	}
	return pages, nil
}

func scopeName(scope int) string {
	switch scope {
	case 0:
		return "none"
	case queue.ScopePartial:
		return "partial"
	case queue.ScopeFull:
		return "full"
	}
	return strconv.Itoa(scope)
}

// refreshText is a topic's periodic refresh for the topic pages: "off",
// "every 1h", or "every 1h (own)" when the topic's own column sets it.
func refreshText(t queue.TopicRow) string {
	if t.RefreshInterval <= 0 {
		return "off"
	}
	if t.RefreshOwn {
		return "every " + fmtDuration(t.RefreshInterval) + " (own)"
	}
	return "every " + fmtDuration(t.RefreshInterval)
}

// fmtDuration is short and human: 850ms, 12.3s, 4m05s, 3h12m, 2d4h.
func fmtDuration(d time.Duration) string {
	neg := ""
	if d < 0 {
		neg, d = "-", -d
	}
	switch {
	case d == 0:
		return "0s"
	case d < time.Millisecond:
		return neg + strconv.FormatInt(d.Microseconds(), 10) + "µs"
	case d < time.Second:
		return neg + strconv.FormatInt(d.Milliseconds(), 10) + "ms"
	case d < time.Minute:
		return neg + strconv.FormatFloat(d.Seconds(), 'f', 1, 64) + "s"
	case d < time.Hour:
		return fmt.Sprintf("%s%dm%02ds", neg, int(d.Minutes()), int(d.Seconds())%60)
	case d < 48*time.Hour:
		return fmt.Sprintf("%s%dh%02dm", neg, int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%s%dd%dh", neg, int(d.Hours())/24, int(d.Hours())%24)
}

// fmtClock shows a primary-clock instant as the primary wrote it (the
// driver reads DATETIME as UTC-labelled wall time).
func fmtClock(t time.Time) string {
	if t.IsZero() {
		return "–"
	}
	return t.Format("2006-01-02 15:04:05")
}
