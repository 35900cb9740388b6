package sim

import (
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"io"
	"math"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

// Plot geometry: a fixed-size chart of allocated against arrived GPU
// demand, both in per cent of capacity, from plotFrom to 100 (below half the
// capacity every policy places everything, and the curves coincide).
const (
	plotFrom              = 50.0
	plotWidth, plotHeight = 760, 540
	marginLeft, marginTop = 70, 60
	marginRight           = 170
	marginBottom          = 60
)

var policyColors = map[Policy]color.RGBA{
	PolicyWhole:   {0xd6, 0x27, 0x28, 0xff},
	PolicyStock:   {0xff, 0x7f, 0x0e, 0xff},
	PolicyTessera: {0x2c, 0xa0, 0x2c, 0xff},
	PolicyFGD:     {0x1f, 0x77, 0xb4, 0xff},
}

// newCanvas is a white plot image and its axes' corners: (x0, y0) the
// origin at the bottom left, (x1, y1) the top right.
func newCanvas() (img *image.RGBA, x0, y0, x1, y1 int) {
	img = image.NewRGBA(image.Rect(0, 0, plotWidth, plotHeight))
	draw.Draw(img, img.Bounds(), image.White, image.Point{}, draw.Src)
	return img, marginLeft, plotHeight - marginBottom, plotWidth - marginRight, marginTop
}

// WritePlot draws each result's mean allocation curve as a PNG: GPU capacity
// allocated (y) against GPU demand arrived (x), with the ideal diagonal and
// a legend giving each policy's unallocated share at the end.
func WritePlot(w io.Writer, title string, results []Result) error {
	img, x0, y0, x1, y1 := newCanvas()
	xmax := 100.0
	for _, r := range results {
		xmax = math.Max(xmax, r.ArrivalsPercent)
	}
	px := func(v float64) int { return x0 + int(math.Round((v-plotFrom)/(xmax-plotFrom)*float64(x1-x0))) }
	py := func(v float64) int { return y0 - int(math.Round((v-plotFrom)/(100-plotFrom)*float64(y0-y1))) }

	grey := color.RGBA{0xdd, 0xdd, 0xdd, 0xff}
	black := color.RGBA{0, 0, 0, 0xff}
	for v := plotFrom; v <= 100; v += 10 {
		line(img, px(plotFrom), py(v), px(xmax), py(v), grey, 1)
		text(img, x0-35, py(v)+4, fmt.Sprintf("%3.0f", v), black)
	}
	for v := plotFrom; v <= xmax; v += 10 {
		line(img, px(v), py(plotFrom), px(v), py(100), grey, 1)
		text(img, px(v)-10, y0+18, fmt.Sprintf("%.0f", v), black)
	}
	line(img, px(plotFrom), py(plotFrom), px(100), py(100), color.RGBA{0x99, 0x99, 0x99, 0xff}, 1)
	line(img, x0, y0, x1, y0, black, 1)
	line(img, x0, y0, x0, y1, black, 1)
	text(img, 10, 18, title, black)
	text(img, x0+(x1-x0)/2-110, plotHeight-15, "GPU demand arrived (% of capacity)", black)
	text(img, 10, marginTop-14, "allocated (% of GPU capacity)", black)

	// Drawn last to first, so that the first policy's curve lies on top
	// where curves coincide.
	for i := len(results) - 1; i >= 0; i-- {
		r := results[i]
		c := policyColors[r.Policy]
		for j := 1; j < len(r.Curve); j++ {
			a, b := r.Curve[j-1], r.Curve[j]
			if a.ArrivedPercent < plotFrom {
				continue
			}
			line(img, px(a.ArrivedPercent), py(math.Max(a.AllocatedPercent, plotFrom)), px(b.ArrivedPercent), py(math.Max(b.AllocatedPercent, plotFrom)), c, 2)
		}
	}
	for i, r := range results {
		c := policyColors[r.Policy]
		ly := marginTop + 20 + 36*i
		line(img, x1+12, ly, x1+36, ly, c, 3)
		text(img, x1+42, ly+4, string(r.Policy), black)
		text(img, x1+42, ly+18, fmt.Sprintf("%.2f%% unalloc.", r.UnallocatedPercent), black)
	}
	if err := png.Encode(w, img); err != nil {
		return fmt.Errorf("encode plot: %w", err)
	}
	return nil
}

// line draws a straight line of the given thickness (Bresenham).
func line(img *image.RGBA, xa, ya, xb, yb int, c color.RGBA, width int) {
	dx, dy := abs(xb-xa), -abs(yb-ya)
	sx, sy := sign(xb-xa), sign(yb-ya)
	e := dx + dy
	for {
		for ox := range width {
			for oy := range width {
				img.SetRGBA(xa+ox-width/2, ya+oy-width/2, c)
			}
		}
		if xa == xb && ya == yb {
			return
		}
		e2 := 2 * e
		if e2 >= dy {
			e += dy
			xa += sx
		}
		if e2 <= dx {
			e += dx
			ya += sy
		}
	}
}

func text(img *image.RGBA, x, y int, s string, c color.RGBA) {
	d := font.Drawer{Dst: img, Src: image.NewUniform(c), Face: basicfont.Face7x13, Dot: fixed.P(x, y)}
	d.DrawString(s)
}

func abs(v int) int { return max(v, -v) }

func sign(v int) int {
	switch {
	case v > 0:
		return 1
	case v < 0:
		return -1
	}
	return 0
}
