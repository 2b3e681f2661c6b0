package bench

import (
	"fmt"
	"html"
	"io"
	"math"
	"strings"
)

// WriteSVG draws the drain results: throughput of every run (bare and
// decryptd, with the medians) and the latency distributions (CDF) of
// every run. Plain SVG 1.1, no scripts, no external fonts.
func (r *Results) WriteSVG(w io.Writer) error {
	d := r.Drain
	if d == nil || len(d.Runs) == 0 {
		return fmt.Errorf("bench: no drain results to chart")
	}
	const (
		width, height = 960, 480
		colBare       = "#3566b8"
		colDec        = "#e07b1a"
		colCSub       = "#4a9a4a"
	)
	var s strings.Builder
	fmt.Fprintf(&s, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="12">`+"\n", width, height, width, height)
	s.WriteString(`<rect width="100%" height="100%" fill="white"/>` + "\n")
	fmt.Fprintf(&s, `<text x="%d" y="22" font-size="15" text-anchor="middle" font-weight="bold">decryptd drain vs bare MQTT subscriber: %d messages, %d devices (%s)</text>`+"\n",
		width/2, d.Messages, d.Devices, r.Date.Format("2006-01-02"))

	// Left: throughput bars.
	x0, y0, pw, ph := 70.0, 60.0, 360.0, 300.0
	maxRate := 0.0
	for _, run := range d.Runs {
		maxRate = math.Max(maxRate, run.Rate)
	}
	top := niceCeil(maxRate)
	fmt.Fprintf(&s, `<text x="%.0f" y="%.0f" text-anchor="middle" font-weight="bold">Throughput (messages/s)</text>`+"\n", x0+pw/2, y0-12)
	axes(&s, x0, y0, pw, ph)
	for i := 0; i <= 5; i++ {
		v := top * float64(i) / 5
		y := y0 + ph - ph*float64(i)/5
		fmt.Fprintf(&s, `<line x1="%.0f" y1="%.1f" x2="%.0f" y2="%.1f" stroke="#ddd"/>`+"\n", x0, y, x0+pw, y)
		fmt.Fprintf(&s, `<text x="%.0f" y="%.1f" text-anchor="end">%s</text>`+"\n", x0-6, y+4, kilo(v))
	}
	// Groups: one per round, then the medians.
	type bar struct {
		label string
		v     float64
		col   string
	}
	var groups [][]bar
	var glabels []string
	rounds := 0
	for _, run := range d.Runs {
		rounds = max(rounds, run.Round)
	}
	for rd := 1; rd <= rounds; rd++ {
		var g []bar
		for _, run := range d.Runs {
			if run.Round != rd {
				continue
			}
			col := colBare
			switch run.Side {
			case "decryptd":
				col = colDec
			case SideCSub:
				col = colCSub
			}
			g = append(g, bar{run.Side, run.Rate, col})
		}
		groups = append(groups, g)
		glabels = append(glabels, fmt.Sprintf("round %d", rd))
	}
	medians := []bar{{"bare", d.BareMedian, colBare}}
	mlabel := fmt.Sprintf("median (%.2f×)", d.Ratio)
	items := []legendItem{{colBare, "", "bare paho subscriber (count + ack)"}}
	if d.CSubMedian > 0 {
		medians = append(medians, bar{SideCSub, d.CSubMedian, colCSub})
		mlabel = fmt.Sprintf("median (%.2f×, %.2f× C)", d.Ratio, d.CSubRatio)
		items = append(items, legendItem{colCSub, "", "mosquitto_sub (C, output discarded)"})
	}
	groups = append(groups, append(medians, bar{"decryptd", d.DecryptdMedian, colDec}))
	glabels = append(glabels, mlabel)
	gw := pw / float64(len(groups))
	for gi, g := range groups {
		bw := gw * 0.7 / float64(max(len(g), 1))
		for bi, b := range g {
			h := ph * b.v / top
			x := x0 + gw*float64(gi) + gw*0.15 + bw*float64(bi)
			fmt.Fprintf(&s, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"/>`+"\n", x, y0+ph-h, bw-2, h, b.col)
			fmt.Fprintf(&s, `<text x="%.1f" y="%.1f" text-anchor="middle" font-size="10">%s</text>`+"\n", x+bw/2-1, y0+ph-h-4, kilo(b.v))
		}
		fmt.Fprintf(&s, `<text x="%.1f" y="%.0f" text-anchor="middle">%s</text>`+"\n", x0+gw*float64(gi)+gw/2, y0+ph+18, glabels[gi])
	}
	legend(&s, x0+10, y0+ph+40, append(items, legendItem{colDec, "", "decryptd → file sink (fsync per batch)"}))

	// Right: latency CDF.
	x0, pw = 560.0, 360.0
	maxLat := 0.0
	for _, run := range d.Runs {
		maxLat = math.Max(maxLat, run.Receipt.Max)
		if run.Sink != nil {
			maxLat = math.Max(maxLat, run.Sink.Max)
		}
	}
	topLat := niceCeil(maxLat / 1000) // seconds
	fmt.Fprintf(&s, `<text x="%.0f" y="%.0f" text-anchor="middle" font-weight="bold">End-to-end latency, CDF (device timestamp →)</text>`+"\n", x0+pw/2, y0-12)
	axes(&s, x0, y0, pw, ph)
	for i := 0; i <= 5; i++ {
		v := topLat * float64(i) / 5
		x := x0 + pw*float64(i)/5
		fmt.Fprintf(&s, `<line x1="%.1f" y1="%.0f" x2="%.1f" y2="%.0f" stroke="#ddd"/>`+"\n", x, y0, x, y0+ph)
		fmt.Fprintf(&s, `<text x="%.1f" y="%.0f" text-anchor="middle">%g s</text>`+"\n", x, y0+ph+16, round2(v))
	}
	for i := 0; i <= 4; i++ {
		y := y0 + ph - ph*float64(i)/4
		fmt.Fprintf(&s, `<line x1="%.0f" y1="%.1f" x2="%.0f" y2="%.1f" stroke="#ddd"/>`+"\n", x0, y, x0+pw, y)
		fmt.Fprintf(&s, `<text x="%.0f" y="%.1f" text-anchor="end">%d%%</text>`+"\n", x0-6, y+4, i*25)
	}
	curve := func(cdf []float64, col, dash string) {
		if len(cdf) == 0 {
			return
		}
		var pts []string
		for i, ms := range cdf {
			x := x0 + pw*math.Min(ms/1000/topLat, 1)
			y := y0 + ph - ph*float64(i)/float64(len(cdf)-1)
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", x, y))
		}
		fmt.Fprintf(&s, `<polyline fill="none" stroke="%s" stroke-width="1.8" stroke-dasharray="%s" points="%s"/>`+"\n", col, dash, strings.Join(pts, " "))
	}
	for _, run := range d.Runs {
		switch run.Side {
		case SideCSub: // no latencies: its output is discarded
		case "bare":
			curve(run.Receipt.CDF, colBare, "none")
		default:
			curve(run.Receipt.CDF, colDec, "none")
			if run.Sink != nil {
				curve(run.Sink.CDF, colDec, "5,3")
			}
		}
	}
	legend(&s, x0+10, y0+ph+40, []legendItem{
		{colBare, "none", "bare: → receipt"},
		{colDec, "none", "decryptd: → receipt (received_at)"},
		{colDec, "5,3", "decryptd: → record in the sink file"},
	})
	fmt.Fprintf(&s, `<text x="%d" y="%d" text-anchor="middle" font-size="10" fill="#555">A backlog is queued, then drained: latency is dominated by the wait in the queue. One line per run; %d CPUs (%s), Mosquitto %s, %s.</text>`+"\n",
		width/2, height-8, r.Machine.CPUs, html.EscapeString(r.Machine.CPUModel), html.EscapeString(r.Machine.Mosquitto), html.EscapeString(r.Machine.GoVersion))
	s.WriteString("</svg>\n")
	_, err := io.WriteString(w, s.String())
	return err
}

type legendItem struct{ col, dash, label string }

func legend(s *strings.Builder, x, y float64, items []legendItem) {
	for i, it := range items {
		yy := y + float64(i)*16
		if it.dash == "" {
			fmt.Fprintf(s, `<rect x="%.0f" y="%.0f" width="14" height="10" fill="%s"/>`+"\n", x, yy-9, it.col)
		} else {
			fmt.Fprintf(s, `<line x1="%.0f" y1="%.0f" x2="%.0f" y2="%.0f" stroke="%s" stroke-width="2" stroke-dasharray="%s"/>`+"\n", x-2, yy-4, x+16, yy-4, it.col, it.dash)
		}
		fmt.Fprintf(s, `<text x="%.0f" y="%.0f">%s</text>`+"\n", x+22, yy, it.label)
	}
}

func axes(s *strings.Builder, x0, y0, pw, ph float64) {
	fmt.Fprintf(s, `<line x1="%.0f" y1="%.0f" x2="%.0f" y2="%.0f" stroke="black"/>`+"\n", x0, y0, x0, y0+ph)
	fmt.Fprintf(s, `<line x1="%.0f" y1="%.0f" x2="%.0f" y2="%.0f" stroke="black"/>`+"\n", x0, y0+ph, x0+pw, y0+ph)
}

// niceCeil rounds v up to 1, 2 or 5 times a power of ten.
func niceCeil(v float64) float64 {
	if v <= 0 || math.IsNaN(v) {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}

func kilo(v float64) string {
	if v >= 1000 {
		return fmt.Sprintf("%.1fk", v/1000)
	}
	return fmt.Sprintf("%.0f", v)
}

func round2(v float64) float64 { return math.Round(v*100) / 100 }
