// Package dashboard is nonqueue's ops dashboard: server-rendered pages,
// served by the nonqueue binary itself, over the topic table (through
// queue), the run history and instance registry (through monitor), and
// optionally live reads of replicas.
//
// Pages: the overview (topics by state, backlog by priority and scope,
// queue latency, throughput and failure rate over the last hour and day,
// phase times, bytes shipped, running topics), replicas and instances,
// a searchable topic list, a topic page with its run history and per-run
// logs, and failures grouped by error. Every page refreshes itself every
// Config.Refresh with a small embedded script (a meta refresh without
// JavaScript); charts are inline SVG drawn on the server. Assets are
// embedded, so there is no build step and nothing to install.
//
// The overview is expensive on a large table (it counts every topic), so
// it is computed at most once per Config.CacheTTL however many browsers
// watch it.
//
// Actions (request recalc for a topic or a filter, change priority,
// release a stuck claim, park, unpark) change the topic table. They are
// disabled unless an operator token is configured. An operator logs in
// with the token and a name (recorded with a released claim); the session
// lives in this process's memory only. Every state-changing request is a
// POST that must carry the session's CSRF token (the login form: a
// double-submit cookie) and, when the browser sends one, an Origin (or
// Referer) of this dashboard. The token is compared in constant time and
// never logged.
package dashboard
