package sim

import (
	"fmt"
	"image/color"
	"image/png"
	"io"
	"math"
)

const plotStartDemand, plotMaxDemand = 10.0, 200.0

var budgetColors = map[Budgets]color.RGBA{
	BudgetsHard:    {0xd6, 0x27, 0x28, 0xff},
	BudgetsElastic: {0x2c, 0xa0, 0x2c, 0xff},
}

// WriteTimelinePlot draws, per result, the mean GPU demand (thin) and GPU
// allocation (thick) over time, in per cent of capacity, with a legend that
// gives each mode's unallocated share while contended and its owner waits.
func WriteTimelinePlot(w io.Writer, title string, results []TimelineResult) error {
	img, x0, y0, x1, y1 := newCanvas()
	// The openb trace's first pods come alone, long before the rest: the
	// plot starts where demand first reaches plotStartDemand.
	from := math.Inf(1)
	for _, r := range results {
		for _, p := range r.Series {
			if p.DemandPercent >= plotStartDemand {
				from = math.Min(from, p.Seconds)
				break
			}
		}
	}
	if math.IsInf(from, 1) {
		from = 0
	}
	xmax, ymax := 1.0, 100.0
	for _, r := range results {
		for _, p := range r.Series {
			xmax = math.Max(xmax, (p.Seconds-from)/3600)
			ymax = math.Max(ymax, p.DemandPercent)
		}
	}
	// Demand far above capacity is a queue; the allocation below 100 % is
	// what the plot is for.
	ymax = math.Min(math.Ceil(ymax/50)*50, plotMaxDemand)
	px := func(h float64) int { return x0 + int(math.Round(math.Max(h, 0)/xmax*float64(x1-x0))) }
	py := func(v float64) int { return y0 - int(math.Round(math.Min(v, ymax)/ymax*float64(y0-y1))) }

	grey := color.RGBA{0xdd, 0xdd, 0xdd, 0xff}
	black := color.RGBA{0, 0, 0, 0xff}
	for v := 0.0; v <= ymax; v += 25 {
		line(img, x0, py(v), x1, py(v), grey, 1)
		text(img, x0-35, py(v)+4, fmt.Sprintf("%3.0f", v), black)
	}
	step := math.Max(1, math.Ceil(xmax/10))
	for h := 0.0; h <= xmax; h += step {
		line(img, px(h), y0, px(h), y1, grey, 1)
		text(img, px(h)-8, y0+18, fmt.Sprintf("%.0f", h), black)
	}
	line(img, x0, py(100), x1, py(100), color.RGBA{0x66, 0x66, 0x66, 0xff}, 1)
	line(img, x0, y0, x1, y0, black, 1)
	line(img, x0, y0, x0, y1, black, 1)
	text(img, 10, 18, title, black)
	text(img, x0+(x1-x0)/2-170, plotHeight-15, fmt.Sprintf("hours since demand first reached %.0f%% of capacity", plotStartDemand), black)
	text(img, 10, marginTop-14, fmt.Sprintf("%% of GPU capacity: demand (thin, cut at %.0f%%), allocated (thick)", plotMaxDemand), black)
	for i := len(results) - 1; i >= 0; i-- {
		r := results[i]
		c := budgetColors[r.Budgets]
		for j := 1; j < len(r.Series); j++ {
			a, b := r.Series[j-1], r.Series[j]
			if a.Seconds < from {
				continue
			}
			ha, hb := (a.Seconds-from)/3600, (b.Seconds-from)/3600
			line(img, px(ha), py(a.DemandPercent), px(hb), py(b.DemandPercent), c, 1)
			line(img, px(ha), py(a.AllocatedPercent), px(hb), py(b.AllocatedPercent), c, 2)
		}
	}
	for i, r := range results {
		c := budgetColors[r.Budgets]
		ly := marginTop + 20 + 64*i
		line(img, x1+12, ly, x1+36, ly, c, 3)
		text(img, x1+42, ly+4, string(r.Budgets), black)
		text(img, x1+42, ly+18, fmt.Sprintf("%.2f%% unalloc.", r.UnallocatedPercent.Mean), black)
		text(img, x1+42, ly+32, fmt.Sprintf("wait p95 %.0fs", r.WaitP95.Mean), black)
		text(img, x1+42, ly+46, fmt.Sprintf("%.0f evictions", r.Evictions.Mean), black)
	}
	if err := png.Encode(w, img); err != nil {
		return fmt.Errorf("encode plot: %w", err)
	}
	return nil
}
