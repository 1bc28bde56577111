package dashboard

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/nonqueue/nonqueue/monitor"
	"github.com/nonqueue/nonqueue/queue"
)

// maxFormBytes bounds a POST body.
const maxFormBytes = 64 << 10

// login starts an operator session: POST token, name, csrf, next.
func (s *Server) login(w http.ResponseWriter, r *http.Request) {
	if !s.actionsEnabled() {
		s.fail(w, r, http.StatusForbidden, "actions are disabled: no operator token is configured (set [dashboard] operator_token_env)")
		return
	}
	if !s.sameOrigin(r) {
		s.fail(w, r, http.StatusForbidden, "cross-origin request refused")
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
	if err := r.ParseForm(); err != nil {
		s.fail(w, r, http.StatusBadRequest, "unreadable form: "+err.Error())
		return
	}
	c, err := r.Cookie(csrfCookie)
	if err != nil || c.Value == "" || !equalSecret(c.Value, r.PostForm.Get("csrf")) {
		s.fail(w, r, http.StatusForbidden, "missing or wrong CSRF token: reload the page and log in again")
		return
	}
	now := time.Now()
	client := s.clientKey(r)
	if s.sessions.throttled(client, now) {
		s.fail(w, r, http.StatusTooManyRequests, "too many failed logins from your address in the last minute; wait a minute and retry")
		return
	}
	name := strings.TrimSpace(r.PostForm.Get("name"))
	if !operatorName.MatchString(name) {
		s.fail(w, r, http.StatusBadRequest, "name: give your name (1-64 letters, digits, spaces, . _ @ -); it is recorded with the claims you release")
		return
	}
	if !equalSecret(string(s.cfg.OperatorToken), r.PostForm.Get("token")) {
		s.sessions.failed(client, now)
		s.log.WarnContext(r.Context(), "dashboard login refused: wrong operator token", "operator", name, "remote", r.RemoteAddr, "client", client)
		s.fail(w, r, http.StatusForbidden, "wrong operator token")
		return
	}
	s.sessions.loggedIn(client)
	id, _ := s.sessions.create(name, now)
	http.SetCookie(w, s.cookie(r, sessionCookie, id, int(s.cfg.SessionTTL.Seconds())))
	s.log.InfoContext(r.Context(), "dashboard login", "operator", name, "remote", r.RemoteAddr)
	http.Redirect(w, r, s.withMsg(s.safeNext(r.PostForm.Get("next")), "login", 0), http.StatusSeeOther)
}

// logout ends the session; it needs the session's CSRF token.
func (s *Server) logout(w http.ResponseWriter, r *http.Request) {
	s.action(func(w http.ResponseWriter, r *http.Request, a *actor) {
		s.sessions.drop(a.sessionID)
		http.SetCookie(w, s.cookie(r, sessionCookie, "", -1))
		http.Redirect(w, r, s.withMsg(s.cfg.Prefix+"/", "logout", 0), http.StatusSeeOther)
	})(w, r)
}

// safeNext keeps a redirect target inside the dashboard.
func (s *Server) safeNext(next string) string {
	home := s.cfg.Prefix + "/"
	if next == "" || !strings.HasPrefix(next, home) || strings.HasPrefix(next, "//") || strings.ContainsAny(next, "\\\r\n") {
		return home
	}
	u, err := url.Parse(next)
	if err != nil || u.Scheme != "" || u.Host != "" {
		return home
	}
	q := u.Query()
	q.Del("msg")
	q.Del("n")
	u.RawQuery = q.Encode()
	return u.String()
}

func (s *Server) withMsg(target, code string, n int) string {
	u, err := url.Parse(target)
	if err != nil {
		return target
	}
	q := u.Query()
	q.Set("msg", code)
	if n > 0 {
		q.Set("n", strconv.Itoa(n))
	}
	u.RawQuery = q.Encode()
	return u.String()
}

// actor is the operator behind an action.
type actor struct {
	sessionID string
	operator  string
	remote    string
}

func (a *actor) String() string {
	return fmt.Sprintf("%q from %s via the dashboard", a.operator, a.remote)
}

// action wraps a state-changing handler: actions enabled, same origin, a
// live session, and the session's CSRF token, in that order; each refusal
// is a 403 that changes nothing. The form is parsed (bounded) before h.
func (s *Server) action(h func(http.ResponseWriter, *http.Request, *actor)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !s.actionsEnabled() {
			s.fail(w, r, http.StatusForbidden, "actions are disabled: no operator token is configured (set [dashboard] operator_token_env)")
			return
		}
		if !s.sameOrigin(r) {
			s.fail(w, r, http.StatusForbidden, "cross-origin request refused")
			return
		}
		id, ss := s.session(r)
		if ss == nil {
			s.fail(w, r, http.StatusForbidden, "log in with the operator token first (or your session expired)")
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
		if err := r.ParseForm(); err != nil {
			s.fail(w, r, http.StatusBadRequest, "unreadable form: "+err.Error())
			return
		}
		if !equalSecret(ss.csrf, r.PostForm.Get("csrf")) {
			s.fail(w, r, http.StatusForbidden, "missing or wrong CSRF token: reload the page and retry")
			return
		}
		h(w, r, &actor{sessionID: id, operator: ss.operator, remote: r.RemoteAddr})
	}
}

// actionError maps an action's error to a status and a message.
func (s *Server) actionError(w http.ResponseWriter, r *http.Request, what string, err error) {
	status := http.StatusInternalServerError
	msg := err.Error()
	switch {
	case errors.Is(err, queue.ErrTopicNotFound):
		status = http.StatusNotFound
	case errors.Is(err, queue.ErrClaimLost):
		status = http.StatusConflict
		msg = "the claim changed since the page was loaded (finished, reaped or claimed again); nothing was released. " + msg
	case errors.Is(err, queue.ErrTopicRunning), errors.Is(err, queue.ErrTopicLocked):
		status = http.StatusConflict
	case errors.Is(err, queue.ErrBadFilter), errors.Is(err, queue.ErrTooMany), errors.Is(err, queue.ErrBadID), errors.Is(err, monitor.ErrBadPause):
		status = http.StatusBadRequest
	}
	s.log.WarnContext(r.Context(), "dashboard action failed", "action", what, "status", status, "err", err)
	s.fail(w, r, status, what+": "+msg)
}

func (s *Server) succeeded(w http.ResponseWriter, r *http.Request, a *actor, what string, target, code string, n int, attrs ...any) {
	s.log.InfoContext(r.Context(), "dashboard action", append([]any{"action", what, "operator", a.operator, "remote", a.remote}, attrs...)...)
	http.Redirect(w, r, s.withMsg(target, code, n), http.StatusSeeOther)
}

func (s *Server) topicURL(id int64) string { return fmt.Sprintf("%s/topics/%d", s.cfg.Prefix, id) }

// formID reads the topic id of an action form.
func formID(r *http.Request) (int64, error) { return parseID("topic id", r.PostForm.Get("id")) }

func parseScope(v string) (int, error) {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "full", "2", "":
		return queue.ScopeFull, nil
	case "partial", "1":
		return queue.ScopePartial, nil
	}
	return 0, fmt.Errorf("scope %q: want full or partial", v)
}

// optPriority reads an optional integer field.
func optPriority(v string) (*int64, error) {
	v = strings.TrimSpace(v)
	if v == "" {
		return nil, nil
	}
	n, err := strconv.ParseInt(v, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("priority %q: not an integer", v)
	}
	return &n, nil
}

// actRequest: id, scope, optional priority.
func (s *Server) actRequest(w http.ResponseWriter, r *http.Request, a *actor) {
	id, err := formID(r)
	if err != nil {
		s.fail(w, r, http.StatusBadRequest, err.Error())
		return
	}
	scope, err := parseScope(r.PostForm.Get("scope"))
	if err != nil {
		s.fail(w, r, http.StatusBadRequest, err.Error())
		return
	}
	prio, err := optPriority(r.PostForm.Get("priority"))
	if err != nil {
		s.fail(w, r, http.StatusBadRequest, err.Error())
		return
	}
	res, err := s.src.Queue.Request(r.Context(), &queue.RequestParams{IDs: []int64{id}, Scope: scope, Priority: prio})
	if err == nil && len(res.Missing) > 0 {
		err = fmt.Errorf("topic %d: %w", id, queue.ErrTopicNotFound)
	}
	if err != nil {
		s.actionError(w, r, "request recalc", err)
		return
	}
	s.succeeded(w, r, a, "request", s.topicURL(id), "requested", 0, "topic_id", id, "scope", scope)
}

// actRequestMatching: state, min_priority, max_priority (the topic list's
// filter), scope.
func (s *Server) actRequestMatching(w http.ResponseWriter, r *http.Request, a *actor) {
	f, _, err := parseFilter(r.PostForm)
	if err != nil {
		s.fail(w, r, http.StatusBadRequest, err.Error())
		return
	}
	f.AfterID = 0
	scope, err := parseScope(r.PostForm.Get("scope"))
	if err != nil {
		s.fail(w, r, http.StatusBadRequest, err.Error())
		return
	}
	res, err := s.src.Queue.RequestMatching(r.Context(), f, &queue.RequestParams{Scope: scope})
	if err != nil {
		s.actionError(w, r, "request recalc for the filter", err)
		return
	}
	q := url.Values{}
	for k, v := range map[string]string{"state": string(f.State), "min_priority": r.PostForm.Get("min_priority"),
		"max_priority": r.PostForm.Get("max_priority"), "id": r.PostForm.Get("id")} {
		if v != "" {
			q.Set(k, v)
		}
	}
	s.succeeded(w, r, a, "request matching", s.cfg.Prefix+"/topics?"+q.Encode(), "requested-matching", res.Requested,
		"state", f.State, "requested", res.Requested, "scope", scope)
}

// actPriority: id, priority.
func (s *Server) actPriority(w http.ResponseWriter, r *http.Request, a *actor) {
	id, err := formID(r)
	if err != nil {
		s.fail(w, r, http.StatusBadRequest, err.Error())
		return
	}
	prio, err := optPriority(r.PostForm.Get("priority"))
	if err == nil && prio == nil {
		err = errors.New("priority: give an integer")
	}
	if err != nil {
		s.fail(w, r, http.StatusBadRequest, err.Error())
		return
	}
	if err := s.src.Queue.SetPriority(r.Context(), id, *prio); err != nil {
		s.actionError(w, r, "change priority", err)
		return
	}
	s.succeeded(w, r, a, "priority", s.topicURL(id), "priority", 0, "topic_id", id, "priority", *prio)
}

// actRelease: id, instance, token (the claim shown), reason.
func (s *Server) actRelease(w http.ResponseWriter, r *http.Request, a *actor) {
	id, err := formID(r)
	if err != nil {
		s.fail(w, r, http.StatusBadRequest, err.Error())
		return
	}
	inst, err := parseID("instance", r.PostForm.Get("instance"))
	if err != nil {
		s.fail(w, r, http.StatusBadRequest, err.Error())
		return
	}
	token, err := strconv.ParseUint(strings.TrimSpace(r.PostForm.Get("token")), 10, 64)
	if err != nil {
		s.fail(w, r, http.StatusBadRequest, fmt.Sprintf("claim token %q: not an unsigned integer", r.PostForm.Get("token")))
		return
	}
	reason := strings.TrimSpace(r.PostForm.Get("reason"))
	if len(reason) > 500 {
		s.fail(w, r, http.StatusBadRequest, "reason: at most 500 characters")
		return
	}
	err = s.src.Queue.ReleaseClaim(r.Context(), &queue.AdminReleaseParams{
		TopicID: id, InstanceID: inst, Token: token, Operator: a.String(), Reason: reason,
	})
	if err != nil {
		s.actionError(w, r, "release claim", err)
		return
	}
	s.succeeded(w, r, a, "release", s.topicURL(id), "released", 0, "topic_id", id, "instance_id", inst, "claim_token", token)
}

// actPark: id, reason.
func (s *Server) actPark(w http.ResponseWriter, r *http.Request, a *actor) {
	id, err := formID(r)
	if err != nil {
		s.fail(w, r, http.StatusBadRequest, err.Error())
		return
	}
	reason := strings.TrimSpace(r.PostForm.Get("reason"))
	if len(reason) > 500 {
		s.fail(w, r, http.StatusBadRequest, "reason: at most 500 characters")
		return
	}
	msg := "parked by operator " + a.String()
	if reason != "" {
		msg += ": " + reason
	}
	if err := s.src.Queue.Park(r.Context(), id, msg); err != nil {
		s.actionError(w, r, "park topic", err)
		return
	}
	s.succeeded(w, r, a, "park", s.topicURL(id), "parked", 0, "topic_id", id)
}

// actUnpark: id.
func (s *Server) actUnpark(w http.ResponseWriter, r *http.Request, a *actor) {
	id, err := formID(r)
	if err != nil {
		s.fail(w, r, http.StatusBadRequest, err.Error())
		return
	}
	was, err := s.src.Queue.Unpark(r.Context(), id)
	if err != nil {
		s.actionError(w, r, "unpark topic", err)
		return
	}
	code := "unparked"
	if !was {
		code = "not-parked"
	}
	s.succeeded(w, r, a, "unpark", s.topicURL(id), code, 0, "topic_id", id)
}

// parsePauseScope reads a pause's scope from the form: replica (a server
// id) and below_priority, each optional.
func parsePauseScope(f url.Values) (monitor.PauseScope, error) {
	var sc monitor.PauseScope
	if v := strings.TrimSpace(f.Get("replica")); v != "" {
		id, err := strconv.ParseUint(v, 10, 32)
		if err != nil || id == 0 {
			return sc, fmt.Errorf("replica %q: want a replica's server id, a positive integer", v)
		}
		sc.ReplicaServerID = uint32(id)
	}
	if v := strings.TrimSpace(f.Get("below_priority")); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return sc, fmt.Errorf("below priority %q: not an integer", v)
		}
		sc.BelowPriority = &n
	}
	return sc, sc.Validate()
}

// actPause: replica, below_priority (optional scope), for (optional
// duration), reason.
func (s *Server) actPause(w http.ResponseWriter, r *http.Request, a *actor) {
	scope, err := parsePauseScope(r.PostForm)
	if err != nil {
		s.fail(w, r, http.StatusBadRequest, err.Error())
		return
	}
	p := &monitor.PauseParams{Scope: scope, By: a.String(), Reason: strings.TrimSpace(r.PostForm.Get("reason"))}
	if v := strings.TrimSpace(r.PostForm.Get("for")); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			s.fail(w, r, http.StatusBadRequest, fmt.Sprintf("for %q: want a positive duration such as 30m or 2h, or nothing (until resumed)", v))
			return
		}
		p.For = d
	}
	if err := p.Validate(); err != nil {
		s.fail(w, r, http.StatusBadRequest, err.Error())
		return
	}
	got, err := s.src.pauses().Add(r.Context(), p)
	if err != nil {
		s.actionError(w, r, "pause", err)
		return
	}
	s.summary.invalidate()
	s.paused.invalidate()
	s.succeeded(w, r, a, "pause", s.cfg.Prefix+"/", "paused", 0, "pause_id", got.ID, "scope", got.Scope.String(), "for", p.For, "reason", p.Reason)
}

// actResume: id, the pause to end.
func (s *Server) actResume(w http.ResponseWriter, r *http.Request, a *actor) {
	id, err := parseID("pause id", r.PostForm.Get("id"))
	if err != nil {
		s.fail(w, r, http.StatusBadRequest, err.Error())
		return
	}
	ended, err := s.src.pauses().Resume(r.Context(), &monitor.ResumeParams{ID: id, By: a.String()})
	if err != nil {
		s.actionError(w, r, "resume", err)
		return
	}
	s.summary.invalidate()
	s.paused.invalidate()
	code := "resumed"
	if len(ended) == 0 {
		code = "not-paused"
	}
	s.succeeded(w, r, a, "resume", s.cfg.Prefix+"/", code, 0, "pause_id", id)
}
