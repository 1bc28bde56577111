package dashboard

import (
	"fmt"
	"html"
	"html/template"
	"strconv"
	"strings"

	"github.com/nonqueue/nonqueue/internal/format"
	"github.com/nonqueue/nonqueue/monitor"
)

// Chart geometry, in SVG user units (the SVG scales to its container).
const (
	chartW, chartH = 720.0, 160.0
	padL, padR     = 44.0, 44.0
	padT, padB     = 12.0, 22.0
)

// throughputChart draws runs per minute as stacked bars (done, failed,
// other) with the failure rate per bucket as a line on a 0-100 % right
// axis. Every number is formatted here and every label escaped, so the
// returned markup is safe to embed.
func throughputChart(t *monitor.Throughput, title string) template.HTML {
	if t == nil || len(t.Buckets) == 0 {
		return ""
	}
	n := len(t.Buckets)
	peak := 0.0
	for _, b := range t.Buckets {
		peak = max(peak, t.PerMinute(b))
	}
	top := niceCeil(peak)
	plotW, plotH := chartW-padL-padR, chartH-padT-padB
	bw := plotW / float64(n)
	y := func(v float64) float64 { return padT + plotH - v/top*plotH }
	f := func(v float64) string { return strconv.FormatFloat(v, 'f', 1, 64) }
	var sb strings.Builder
	fmt.Fprintf(&sb, `<svg class="chart" viewBox="0 0 %s %s" role="img" aria-label="%s" xmlns="http://www.w3.org/2000/svg">`,
		f(chartW), f(chartH), html.EscapeString(title))
	fmt.Fprintf(&sb, `<title>%s</title>`, html.EscapeString(title))
	// Axes and grid.
	for _, frac := range []float64{0, 0.5, 1} {
		gy := y(top * frac)
		fmt.Fprintf(&sb, `<line class="grid" x1="%s" x2="%s" y1="%s" y2="%s"/>`, f(padL), f(chartW-padR), f(gy), f(gy))
		fmt.Fprintf(&sb, `<text class="axis" x="%s" y="%s" text-anchor="end">%s</text>`, f(padL-4), f(gy+4), trimFloat(top*frac))
		fmt.Fprintf(&sb, `<text class="axis fail" x="%s" y="%s">%d%%</text>`, f(chartW-padR+4), f(gy+4), int(frac*100))
	}
	var line []string
	for i, b := range t.Buckets {
		x := padL + float64(i)*bw
		base := 0.0
		mins := t.Bucket.Minutes()
		for _, part := range []struct {
			class string
			v     int64
		}{{"done", b.Done}, {"failed", b.Failed}, {"other", b.Other}} {
			if part.v == 0 {
				continue
			}
			h := float64(part.v) / mins
			fmt.Fprintf(&sb, `<rect class="%s" x="%s" y="%s" width="%s" height="%s"/>`, part.class,
				f(x+0.5), f(y(base+h)), f(max(bw-1, 0.5)), f(y(base)-y(base+h)))
			base += h
		}
		// A transparent full-height bar carries the tooltip.
		fmt.Fprintf(&sb, `<rect class="hit" x="%s" y="%s" width="%s" height="%s"><title>%s: %d done, %d failed, %d other, %s</title></rect>`,
			f(x), f(padT), f(bw), f(plotH), html.EscapeString(b.Start.Format("01-02 15:04")), b.Done, b.Failed, b.Other, html.EscapeString(format.Bytes(b.Bytes)))
		if b.Done+b.Failed > 0 {
			rate := float64(b.Failed) / float64(b.Done+b.Failed)
			line = append(line, f(x+bw/2)+","+f(padT+plotH-rate*plotH))
		}
	}
	if len(line) > 1 {
		fmt.Fprintf(&sb, `<polyline class="rate" points="%s"/>`, strings.Join(line, " "))
	}
	fmt.Fprintf(&sb, `<text class="axis" x="%s" y="%s">%s</text>`, f(padL), f(chartH-6), html.EscapeString(fmtClock(t.Buckets[0].Start)))
	fmt.Fprintf(&sb, `<text class="axis" x="%s" y="%s" text-anchor="end">now</text>`, f(chartW-padR), f(chartH-6))
	sb.WriteString(`</svg>`)
	return template.HTML(sb.String()) // #nosec: built from numbers and escaped labels only
}

// niceCeil rounds a positive maximum up to 1, 2 or 5 times a power of ten
// (at least 1), so the axis reads well.
func niceCeil(v float64) float64 {
	if v <= 1 {
		return 1
	}
	p := 1.0
	for p*10 <= v {
		p *= 10
	}
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}

func trimFloat(v float64) string {
	return strconv.FormatFloat(v, 'f', -1, 64)
}
