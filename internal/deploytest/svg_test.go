package deploytest

import (
	"fmt"
	"html"
	"math"
	"sort"
	"strings"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql"
)

// panelData is one panel's evaluated queries, ready to draw.
type panelData struct {
	Title  string
	Unit   string
	Stat   bool
	Series []seriesData
}

type seriesData struct {
	Legend string
	T      []time.Time
	V      []float64
}

var palette = []string{"#7eb26d", "#eab839", "#6ed0e0", "#ef843c", "#e24d42", "#1f78c1", "#ba43a9", "#705da0", "#508642", "#cca300"}

// renderSVG draws a dashboard as Grafana lays it out (two panels a row)
// in a plain SVG: a line per series over the run's time range, its
// legend, and the y range; a stat panel shows each series' last value.
// It is no Grafana: it shows what the panels' queries return.
func renderSVG(title, note string, panels []panelData, from, to time.Time) string {
	const (
		pw, ph = 600, 280 // panel
		gap    = 12
		head   = 56
	)
	rows := (len(panels) + 1) / 2
	w, h := 2*pw+3*gap, head+rows*(ph+gap)+gap
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="Helvetica, Arial, sans-serif">`+"\n", w, h, w, h)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="#111217"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%d" y="28" fill="#e6e6e6" font-size="20">%s</text>`+"\n", gap, html.EscapeString(title))
	fmt.Fprintf(&b, `<text x="%d" y="46" fill="#8e8e8e" font-size="11">%s</text>`+"\n", gap, html.EscapeString(note))
	for i, p := range panels {
		x := gap + (i%2)*(pw+gap)
		y := head + (i/2)*(ph+gap)
		fmt.Fprintf(&b, `<g transform="translate(%d,%d)">`+"\n", x, y)
		fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="#181b1f" stroke="#2c3235"/>`+"\n", pw, ph)
		fmt.Fprintf(&b, `<text x="10" y="20" fill="#d8d9da" font-size="13" font-weight="bold">%s</text>`+"\n", html.EscapeString(p.Title))
		if p.Stat {
			drawStat(&b, p, pw, ph)
		} else {
			drawLines(&b, p, pw, ph, from, to)
		}
		b.WriteString("</g>\n")
	}
	b.WriteString("</svg>\n")
	return b.String()
}

func drawStat(b *strings.Builder, p panelData, pw, ph int) {
	if len(p.Series) == 0 {
		fmt.Fprintf(b, `<text x="%d" y="%d" fill="#8e8e8e" font-size="16" text-anchor="middle">No data</text>`+"\n", pw/2, ph/2)
		return
	}
	cw := pw / len(p.Series)
	for i, s := range p.Series {
		v := math.NaN()
		if len(s.V) > 0 {
			v = s.V[len(s.V)-1]
		}
		cx := cw*i + cw/2
		fmt.Fprintf(b, `<text x="%d" y="%d" fill="%s" font-size="44" text-anchor="middle">%s</text>`+"\n", cx, ph/2+10, palette[i%len(palette)], html.EscapeString(format(v, p.Unit)))
		fmt.Fprintf(b, `<text x="%d" y="%d" fill="#a0a0a0" font-size="13" text-anchor="middle">%s</text>`+"\n", cx, ph/2+40, html.EscapeString(s.Legend))
	}
}

func drawLines(b *strings.Builder, p panelData, pw, ph int, from, to time.Time) {
	const left, right, top = 64, 12, 32
	legendRows := min(len(p.Series), 8)
	bottom := 24 + 14*((legendRows+1)/2)
	gw, gh := pw-left-right, ph-top-bottom
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, s := range p.Series {
		for _, v := range s.V {
			if !math.IsNaN(v) && !math.IsInf(v, 0) {
				lo, hi = math.Min(lo, v), math.Max(hi, v)
			}
		}
	}
	if math.IsInf(lo, 1) {
		fmt.Fprintf(b, `<text x="%d" y="%d" fill="#8e8e8e" font-size="16" text-anchor="middle">No data</text>`+"\n", pw/2, ph/2)
		return
	}
	lo = math.Min(lo, 0)
	if hi <= lo {
		hi = lo + 1
	}
	hi *= 1.1
	span := to.Sub(from).Seconds()
	px := func(t time.Time) float64 { return left + float64(gw)*t.Sub(from).Seconds()/span }
	py := func(v float64) float64 { return top + float64(gh)*(1-(v-lo)/(hi-lo)) }
	for k := 0; k <= 4; k++ {
		v := lo + (hi-lo)*float64(k)/4
		yy := py(v)
		fmt.Fprintf(b, `<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#2c3235"/>`+"\n", left, left+gw, yy, yy)
		fmt.Fprintf(b, `<text x="%d" y="%.1f" fill="#8e8e8e" font-size="10" text-anchor="end">%s</text>`+"\n", left-6, yy+3, html.EscapeString(format(v, p.Unit)))
	}
	for k := 0; k <= 4; k++ {
		t := from.Add(time.Duration(float64(to.Sub(from)) * float64(k) / 4))
		fmt.Fprintf(b, `<text x="%.1f" y="%d" fill="#8e8e8e" font-size="10" text-anchor="middle">+%ds</text>`+"\n", px(t), top+gh+14, int(t.Sub(from).Seconds()))
	}
	for i, s := range p.Series {
		var path strings.Builder
		pen := false
		for j, v := range s.V {
			if math.IsNaN(v) || math.IsInf(v, 0) {
				pen = false
				continue
			}
			cmd := "L"
			if !pen {
				cmd = "M"
			}
			fmt.Fprintf(&path, "%s%.1f,%.1f ", cmd, px(s.T[j]), py(v))
			pen = true
		}
		c := palette[i%len(palette)]
		fmt.Fprintf(b, `<path d="%s" fill="none" stroke="%s" stroke-width="1.6"/>`+"\n", strings.TrimSpace(path.String()), c)
		if i < legendRows {
			lx, ly := 10+(i%2)*(pw/2), top+gh+30+14*(i/2)
			fmt.Fprintf(b, `<rect x="%d" y="%d" width="10" height="3" fill="%s"/>`, lx, ly-4, c)
			fmt.Fprintf(b, `<text x="%d" y="%d" fill="#c7c7c7" font-size="11">%s</text>`+"\n", lx+14, ly, html.EscapeString(clip(s.Legend, 44)))
		}
	}
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-1] + "…"
}

// format writes v in the panel's unit, shortly.
func format(v float64, unit string) string {
	if math.IsNaN(v) {
		return "NaN"
	}
	switch unit {
	case "s":
		switch a := math.Abs(v); {
		case a == 0:
			return "0"
		case a < 1e-3:
			return fmt.Sprintf("%.0fµs", v*1e6)
		case a < 1:
			return fmt.Sprintf("%.1fms", v*1e3)
		default:
			return fmt.Sprintf("%.2fs", v)
		}
	case "percentunit":
		return fmt.Sprintf("%.1f%%", v*100)
	case "ops":
		return short(v) + "/s"
	}
	return short(v)
}

func short(v float64) string {
	switch a := math.Abs(v); {
	case a >= 1e6:
		return fmt.Sprintf("%.1fM", v/1e6)
	case a >= 1e3:
		return fmt.Sprintf("%.1fk", v/1e3)
	case a == math.Trunc(a):
		return fmt.Sprintf("%.0f", v)
	case a >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

// toSeries turns a range query's matrix into drawable series, legends
// filled from the panel's legend format ({{label}}).
func toSeries(m promql.Matrix, legend string) []seriesData {
	var out []seriesData
	for _, s := range m {
		name := legend
		s.Metric.Range(func(l labels.Label) {
			name = strings.ReplaceAll(name, "{{"+l.Name+"}}", l.Value)
		})
		sd := seriesData{Legend: name}
		for _, p := range s.Floats {
			sd.T = append(sd.T, time.UnixMilli(p.T))
			sd.V = append(sd.V, p.F)
		}
		out = append(out, sd)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Legend < out[j].Legend })
	return out
}
