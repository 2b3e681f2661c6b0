package main

import (
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"strings"

	"github.com/decryptd/decryptd/internal/rotation"
)

// The chart is drawn with the standard library only: rectangles and a
// 5x7 bitmap font (upper case, digits and a little punctuation), scaled.

// fontChars lists the glyphs of fontBits, in order; lower case is drawn
// as upper case, anything else as a space.
const fontChars = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ -.,:()/><=%_#+@"

// fontBits holds 7 rows of 5 cells per glyph, '#' set.
const fontBits = "" +
	".###.#...##..###.#.###..##...#.###." + // 0
	"..#...##....#....#....#....#...###." + // 1
	".###.#...#....#...#...#...#...#####" + // 2
	"#####...#...#.....#.....##...#.###." + // 3
	"...#...##..#.#.#..#.#####...#....#." + // 4
	"######....####.....#....##...#.###." + // 5
	"..##..#...#....####.#...##...#.###." + // 6
	"#####....#...#...#...#....#....#..." + // 7
	".###.#...##...#.###.#...##...#.###." + // 8
	".###.#...##...#.####....#...#..##.." + // 9
	".###.#...##...#######...##...##...#" + // A
	"####.#...##...#####.#...##...#####." + // B
	".###.#...##....#....#....#...#.###." + // C
	"###..#..#.#...##...##...##..#.###.." + // D
	"######....#....####.#....#....#####" + // E
	"######....#....####.#....#....#...." + // F
	".###.#...##....#.####...##...#.####" + // G
	"#...##...##...#######...##...##...#" + // H
	".###...#....#....#....#....#...###." + // I
	"..###...#....#....#....#.#..#..##.." + // J
	"#...##..#.#.#..##...#.#..#..#.#...#" + // K
	"#....#....#....#....#....#....#####" + // L
	"#...###.###.#.##.#.##...##...##...#" + // M
	"#...##...###..##.#.##..###...##...#" + // N
	".###.#...##...##...##...##...#.###." + // O
	"####.#...##...#####.#....#....#...." + // P
	".###.#...##...##...##.#.##..#..##.#" + // Q
	"####.#...##...#####.#.#..#..#.#...#" + // R
	".#####....#.....###.....#....#####." + // S
	"#####..#....#....#....#....#....#.." + // T
	"#...##...##...##...##...##...#.###." + // U
	"#...##...##...##...##...#.#.#...#.." + // V
	"#...##...##...##.#.##.#.##.#.#.#.#." + // W
	"#...##...#.#.#...#...#.#.#...##...#" + // X
	"#...##...#.#.#...#....#....#....#.." + // Y
	"#####....#...#...#...#...#....#####" + // Z
	"..................................." + // space
	"...............#####..............." + // -
	"..........................##...##.." + // .
	".....................##....#...#..." + // ,
	"......##...##........##...##......." + // :
	"...#...#...#....#....#.....#.....#." + // (
	".#.....#.....#....#....#...#...#..." + // )
	".........#...#...#...#...#........." + // /
	".#.....#.....#.....#...#...#...#..." + // >
	"...#...#...#...#.....#.....#.....#." + // <
	"..........#####.....#####.........." + // =
	"##...##..#...#...#...#...#..##...##" + // %
	"..............................#####" + // _
	".#.#..#.#.#####.#.#.#####.#.#..#.#." + // #
	".......#....#..#####..#....#......." + // +
	".###.#...##.####.#.##.####.....###." // @

const glyphW, glyphH = 5, 7

// glyph reports whether cell (x, y) of r's glyph is set.
func glyph(r rune, x, y int) bool {
	if r >= 'a' && r <= 'z' {
		r -= 'a' - 'A'
	}
	i := strings.IndexRune(fontChars, r)
	if i < 0 {
		return false
	}
	return fontBits[i*glyphW*glyphH+y*glyphW+x] == '#'
}

// textWidth is the width of s drawn at scale.
func textWidth(s string, scale int) int {
	n := len([]rune(s))
	if n == 0 {
		return 0
	}
	return (n*(glyphW+1) - 1) * scale
}

func drawText(img *image.RGBA, x, y int, s string, scale int, c color.Color) {
	for _, r := range s {
		for gy := range glyphH {
			for gx := range glyphW {
				if glyph(r, gx, gy) {
					fill(img, x+gx*scale, y+gy*scale, scale, scale, c)
				}
			}
		}
		x += (glyphW + 1) * scale
	}
}

func fill(img *image.RGBA, x, y, w, h int, c color.Color) {
	r := image.Rect(x, y, x+w, y+h).Intersect(img.Bounds())
	for yy := r.Min.Y; yy < r.Max.Y; yy++ {
		for xx := r.Min.X; xx < r.Max.X; xx++ {
			img.Set(xx, yy, c)
		}
	}
}

// niceMax rounds n up to 1, 2 or 5 times a power of ten (at least 5), so
// the axis has round ticks.
func niceMax(n int) int {
	if n <= 5 {
		return 5
	}
	for p := 1; ; p *= 10 {
		for _, m := range []int{1, 2, 5} {
			if m*p >= n {
				return m * p
			}
		}
	}
}

// Chart geometry and colours.
const (
	chartW, chartH = 1200, 580
	plotL, plotR   = 90, chartW - 30
	plotT, plotB   = 150, chartH - 90
)

// writeChart draws the age distribution of st as a PNG bar chart: one bar
// per bucket (the last, due for rotation, in red), a count above each, a
// labelled y axis with grid lines, and the state counts in the heading.
func writeChart(w io.Writer, st rotation.FleetStatus) error {
	var (
		white = color.RGBA{255, 255, 255, 255}
		ink   = color.RGBA{30, 30, 30, 255}
		grid  = color.RGBA{220, 220, 220, 255}
		blue  = color.RGBA{52, 101, 164, 255}
		red   = color.RGBA{204, 0, 0, 255}
		grey  = color.RGBA{100, 100, 100, 255}
	)
	img := image.NewRGBA(image.Rect(0, 0, chartW, chartH))
	fill(img, 0, 0, chartW, chartH, white)

	drawText(img, 20, 18, fmt.Sprintf("DEK AGE, CURRENT VERSIONS OF %d KEYS (MAX AGE %s)", st.Keys, rotation.ShortDuration(st.MaxAge)), 3, ink)
	drawText(img, 20, 58, fmt.Sprintf("CURRENT %d   PENDING %d   STRAGGLERS %d   DUE %d   REVOKED VERSIONS %d",
		st.Current, st.Pending, st.Stragglers, st.Due, st.Versions["revoked"]), 2, grey)
	drawText(img, 20, 84, st.At.UTC().Format("2006-01-02 15:04 UTC"), 2, grey)

	top := 0
	for _, b := range st.Ages {
		top = max(top, b.Count)
	}
	ymax := niceMax(top)
	plotH := plotB - plotT
	const ticks = 5
	for i := 0; i <= ticks; i++ {
		v := ymax * i / ticks
		y := plotB - plotH*i/ticks
		fill(img, plotL, y, plotR-plotL, 1, grid)
		label := fmt.Sprint(v)
		drawText(img, plotL-10-textWidth(label, 2), y-7, label, 2, ink)
	}
	drawText(img, plotL-textWidth("KEYS", 2)/2, plotT-30, "KEYS", 2, ink)

	slot := (plotR - plotL) / len(st.Ages)
	barW := slot * 7 / 10
	for i, b := range st.Ages {
		x := plotL + i*slot + (slot-barW)/2
		h := plotH * b.Count / ymax
		c := blue
		if i == len(st.Ages)-1 {
			c = red
		}
		fill(img, x, plotB-h, barW, h, c)
		n := fmt.Sprint(b.Count)
		drawText(img, x+(barW-textWidth(n, 2))/2, plotB-h-20, n, 2, ink)
		scale := 2
		if textWidth(b.Label, 2) > slot-10 {
			scale = 1
		}
		drawText(img, plotL+i*slot+(slot-textWidth(b.Label, scale))/2, plotB+12, b.Label, scale, ink)
	}
	fill(img, plotL, plotT, 2, plotH+1, ink) // y axis
	fill(img, plotL, plotB, plotR-plotL, 2, ink)
	title := "AGE OF THE CURRENT DEK VERSION (RED: DUE FOR ROTATION)"
	drawText(img, (chartW-textWidth(title, 2))/2, chartH-40, title, 2, ink)
	return png.Encode(w, img)
}
