package partition

import (
	"encoding/binary"
	"math"
	"math/rand/v2"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// Rollout orders the candidates by playing what each leaves: for each free
// candidate it plays futures random futures from the state taking it leaves,
// and ranks the candidates by the memory slices their futures put in use,
// most first. A future draws requests of one device from mix (a weight per
// class number, as Prepared.Weigh numbers them; a class of weight 0 is never
// drawn) and places each on the fullest counter set (fewest memory slices
// left) where a device of its class fits (the first such set in the order the
// devices name them), on its first such device in the devices' order, until a
// request fits nowhere. That is one step of policy improvement over "fullest
// first": the docs' packing benchmark measures it against BestFit
// (docs/benchmarks.md, Packing).
//
// Every candidate's futures are drawn from the same seeds, seed and the
// future's number (common random numbers), so candidates are compared on the
// same requests and the order is a function of the state, the mix and seed.
// Candidates on counter sets of the same devices in the same state, at the
// same place among them, leave the node in states that differ only in which
// set is which, so each such group is played once and its candidates tie.
// A candidate that does not fit goes last; equal values keep the candidates'
// order. It only orders, as BestFit does: the caller still checks each
// device it takes.
//
// A future's request looks only at the counter sets: each set's state is a
// number in a table shared by the sets of the same devices (the rollout of
// an empty node of eight H200s meets 146 states), which knows, per state,
// the first device of each class drawn that fits and the state taking a
// device leads to, each worked out the first time a future asks. So it costs
// futures × the candidates' groups × a future's requests × the sets, with
// the devices looked at once per state: about 1.2 ms for a 1g partition with
// 256 futures on an empty node of eight H200s and 0.34 ms on one half full,
// where scanning the devices for every request took 2.5 and 0.54 ms
// (BenchmarkRollout). A scheduler runs it where one node's choice is made,
// not for every node it filters. The work and the table are bounded
// (rolloutWork, rolloutStates) whatever devices a node publishes: past
// either, the futures not yet played whole are dropped, and with none played
// the order is the candidates'.
func (l Left) Rollout(candidates []int, mix []float64, futures int, seed uint64) []int {
	p := l.p
	r := newRoller(l, mix)
	// Each free candidate's group, and each group's start: the state of
	// every set once the candidate is taken. The groups are played once each.
	groupOf := make([]int, len(candidates))
	var starts [][]int32
	index := map[string]int{}
	after := make([]int64, len(l.vals))
	for k, c := range candidates {
		if p.blockedBy(c, l.vals) {
			groupOf[k] = -1
			continue
		}
		key := l.group(c, r.member, r.names)
		g, ok := index[key]
		if !ok {
			g = len(starts)
			index[key] = g
			copy(after, l.vals)
			if l.listed[p.set[c]] {
				for _, u := range p.uses(c) {
					after[u.counter] -= u.n
				}
			}
			starts = append(starts, r.states(after))
		}
		groupOf[k] = g
	}
	// Futures are played a round at a time, future j of every group, so that
	// where the bound stops them every group has played the same futures:
	// the round under way is dropped.
	sums := make([]int64, len(starts))
	round := make([]int64, len(starts))
	src := rand.NewPCG(0, 0)
	rng := rand.New(src)
	for j := 0; j < futures && len(r.drawn) > 0 && len(starts) > 0 && r.within(); j++ {
		whole := true
		for g, start := range starts {
			src.Seed(seed, uint64(j))
			if round[g], whole = r.future(start, rng); !whole {
				break
			}
		}
		if !whole {
			break
		}
		for g, v := range round {
			sums[g] += v
		}
	}
	value := make([]int64, len(candidates))
	for k, g := range groupOf {
		value[k] = -1
		if g >= 0 {
			value[k] = sums[g]
		}
	}
	order := make([]int, len(candidates))
	for k := range order {
		order[k] = k
	}
	sort.SliceStable(order, func(x, y int) bool { return value[order[x]] > value[order[y]] })
	out := make([]int, len(order))
	for k, o := range order {
		out[k] = candidates[o]
	}
	return out
}

// group names candidate c's group for Rollout: its set's devices (their
// classes and what they consume), what the set has left, and c's place
// among the set's devices. member are each set's devices (Prepared.members);
// shapes keeps each set's devices' part.
func (l Left) group(c int, member [][]int, shapes []string) string {
	p := l.p
	s := p.set[c]
	if shapes[s] == "" {
		shapes[s] = p.shape(s, member[s])
	}
	var b strings.Builder
	b.WriteString(shapes[s])
	b.WriteString(strconv.FormatBool(l.listed[s]))
	for _, v := range l.vals[p.off[s]:p.off[s+1]] {
		b.WriteByte('|')
		b.WriteString(strconv.FormatInt(v, 10))
	}
	place, _ := slices.BinarySearch(member[s], c)
	b.WriteByte('@')
	b.WriteString(strconv.Itoa(place))
	return b.String()
}

// members are each set's devices, in order.
func (p *Prepared) members() [][]int {
	member := make([][]int, len(p.sets))
	for i, s := range p.set {
		member[s] = append(member[s], i)
	}
	return member
}

// shape names set s's devices (member): their classes and what they
// consume, by counter number within the set (marked where the counter is a
// memory slice), in order. Sets of the same shape are the same GPU model
// cut the same way.
func (p *Prepared) shape(s int, member []int) string {
	var b strings.Builder
	for _, i := range member {
		b.WriteString(strconv.Itoa(p.class[i]))
		for _, u := range p.uses(i) {
			b.WriteByte(',')
			if p.slice[u.counter] {
				b.WriteByte('m')
			}
			b.WriteString(strconv.Itoa(u.counter - p.off[s]))
			b.WriteByte(':')
			b.WriteString(strconv.FormatInt(u.n, 10))
		}
		b.WriteByte(';')
	}
	return b.String()
}

// rolloutWork bounds Rollout's work, in looks at a counter set or at one
// counter of a device: an empty node of eight H200s takes about 1.1 million
// of it with 1,024 futures, and a node of 8,192 counter sets more reaches it
// in about 5 ms (BenchmarkRollout, "bounded"). rolloutStates bounds its
// tables, in numbers kept: the empty node's take 6 thousand.
const (
	rolloutWork   = 1 << 22
	rolloutStates = 1 << 18
)

// roller plays Rollout's futures over its sets' states.
type roller struct {
	l Left
	// drawn are the classes drawn, by their number in the tables; cum is
	// their weights summed.
	drawn []int
	cum   []float64
	total float64
	// shapeOf is each set's shape; a set of no drawn device has none (-1),
	// nor has a set left out of what is left.
	shapeOf []int
	shapes  []*rollShape
	// names are the sets' shapes as Prepared.shape names them, "" until
	// named (group names the rest).
	names []string
	// member are each set's devices, in order.
	member [][]int
	// ids and slicesLeft are each set's state and memory slices left in the
	// future being played.
	ids        []int32
	slicesLeft []int64
	work, kept int64
	key        []byte
}

// rollShape is the table of the states of the sets of one shape, each
// state numbered in the order it was first met.
type rollShape struct {
	// set is the first set of the shape: positions are among its devices.
	set int
	// byClass[d] are the positions of the devices of drawn class d.
	byClass [][]int32
	// take[pos] is the number among the devices drawn of the device at
	// pos, -1 for one of no drawn class; drawn is how many are drawn.
	take  []int32
	drawn int
	// size[pos] is the memory slices the device at pos takes.
	size  []int64
	index map[string]int32
	// Of each state: what the set has left (by counter number within it)
	// and its memory slices left; first[id*len(drawn)+d] the position of
	// the first device of drawn class d that fits, -1 for none, -2 until
	// asked; next[id*drawn+t] the state taking drawn device t leads to, -1
	// until asked.
	vals       [][]int64
	slicesLeft []int64
	first      []int32
	next       []int32
}

// newRoller numbers the classes mix draws and gives each shape of l's listed
// sets that has a device of one of them an empty table.
func newRoller(l Left, mix []float64) *roller {
	p := l.p
	r := &roller{l: l, shapeOf: make([]int, len(p.sets)), names: make([]string, len(p.sets)), member: p.members(),
		ids: make([]int32, len(p.sets)), slicesLeft: make([]int64, len(p.sets))}
	dense := make([]int, len(p.classes))
	for k := range dense {
		dense[k] = -1
	}
	has := make([]bool, len(p.classes))
	for _, k := range p.class {
		has[k] = true
	}
	for k, w := range mix {
		if k < len(has) && has[k] && w > 0 && !math.IsInf(w, 1) {
			dense[k] = len(r.drawn)
			r.drawn = append(r.drawn, k)
			r.total += w
			r.cum = append(r.cum, r.total)
		}
	}
	byShape := map[string]int{}
	for s := range p.sets {
		r.shapeOf[s] = -1
		drawn := false
		for _, i := range r.member[s] {
			drawn = drawn || dense[p.class[i]] >= 0
		}
		if !drawn || !l.listed[s] {
			continue
		}
		name := p.shape(s, r.member[s])
		r.names[s] = name
		n, ok := byShape[name]
		if !ok {
			n = len(r.shapes)
			byShape[name] = n
			sh := &rollShape{set: s, byClass: make([][]int32, len(r.drawn)), take: make([]int32, len(r.member[s])),
				size: make([]int64, len(r.member[s])), index: map[string]int32{}}
			for pos, i := range r.member[s] {
				sh.take[pos] = -1
				if d := dense[p.class[i]]; d >= 0 {
					sh.byClass[d] = append(sh.byClass[d], int32(pos))
					sh.take[pos] = int32(sh.drawn)
					sh.drawn++
				}
				for _, u := range p.uses(i) {
					if p.slice[u.counter] {
						sh.size[pos] += u.n
					}
				}
			}
			r.shapes = append(r.shapes, sh)
		}
		r.shapeOf[s] = n
	}
	return r
}

// within reports whether the work and the tables are within their bounds.
func (r *roller) within() bool { return r.work <= rolloutWork && r.kept <= rolloutStates }

// states are the state of each set with what is left (by counter number).
func (r *roller) states(vals []int64) []int32 {
	p := r.l.p
	ids := make([]int32, len(p.sets))
	for s, n := range r.shapeOf {
		if n >= 0 {
			ids[s] = r.state(r.shapes[n], vals[p.off[s]:p.off[s+1]])
		}
	}
	return ids
}

// state is the number of the state of what a set of the shape has left.
func (r *roller) state(sh *rollShape, vals []int64) int32 {
	r.key = r.key[:0]
	for _, v := range vals {
		r.key = binary.AppendVarint(r.key, v)
	}
	r.work += int64(len(vals))
	if id, ok := sh.index[string(r.key)]; ok {
		return id
	}
	p := r.l.p
	var slicesLeft int64
	for k, v := range vals {
		if p.slice[p.off[sh.set]+k] {
			slicesLeft += v
		}
	}
	id := int32(len(sh.vals))
	sh.index[string(r.key)] = id
	sh.vals = append(sh.vals, slices.Clone(vals))
	sh.slicesLeft = append(sh.slicesLeft, slicesLeft)
	sh.first = append(sh.first, slices.Repeat([]int32{-2}, len(r.drawn))...)
	sh.next = append(sh.next, slices.Repeat([]int32{-1}, sh.drawn)...)
	r.kept += int64(len(vals) + len(r.drawn) + sh.drawn)
	return id
}

// first is the position of the first device of drawn class d that fits in
// state id of the shape, -1 for none.
func (r *roller) first(sh *rollShape, id int32, d int) int32 {
	at := int(id)*len(r.drawn) + d
	if pos := sh.first[at]; pos != -2 {
		return pos
	}
	p := r.l.p
	vals, slicesLeft := sh.vals[id], sh.slicesLeft[id]
	sh.first[at] = -1
	for _, pos := range sh.byClass[d] {
		if slicesLeft < sh.size[pos] {
			continue
		}
		fits := true
		for _, u := range p.uses(r.member[sh.set][pos]) {
			r.work++
			if vals[u.counter-p.off[sh.set]] < u.n {
				fits = false
				break
			}
		}
		if fits {
			sh.first[at] = pos
			break
		}
	}
	return sh.first[at]
}

// next is the state that taking the device at pos leads to from state id.
func (r *roller) next(sh *rollShape, id int32, pos int32) int32 {
	at := int(id)*sh.drawn + int(sh.take[pos])
	if n := sh.next[at]; n >= 0 {
		return n
	}
	p := r.l.p
	vals := slices.Clone(sh.vals[id])
	for _, u := range p.uses(r.member[sh.set][pos]) {
		vals[u.counter-p.off[sh.set]] -= u.n
	}
	n := r.state(sh, vals)
	sh.next[at] = n
	return n
}

// future plays one future from the sets' states start and returns the
// memory slices it puts in use; whole is false where the bounds stopped it.
// It takes at most as many devices as there are, so a device that consumes
// nothing cannot make it endless.
func (r *roller) future(start []int32, rng *rand.Rand) (used int64, whole bool) {
	copy(r.ids, start)
	for s, n := range r.shapeOf {
		if n >= 0 {
			r.slicesLeft[s] = r.shapes[n].slicesLeft[start[s]]
		}
	}
	for range len(r.l.p.set) {
		if !r.within() {
			return 0, false
		}
		x := rng.Float64() * r.total
		d := len(r.drawn) - 1
		for n, c := range r.cum {
			if x < c {
				d = n
				break
			}
		}
		best, at := -1, int32(-1)
		var fewest int64 = math.MaxInt64
		for s, n := range r.shapeOf {
			r.work++
			if n < 0 || r.slicesLeft[s] >= fewest {
				continue
			}
			sh := r.shapes[n]
			pos := sh.first[int(r.ids[s])*len(r.drawn)+d]
			if pos == -2 {
				pos = r.first(sh, r.ids[s], d)
			}
			if pos >= 0 {
				best, at, fewest = s, pos, r.slicesLeft[s]
			}
		}
		if best < 0 {
			break
		}
		sh := r.shapes[r.shapeOf[best]]
		used += sh.size[at]
		r.ids[best] = r.next(sh, r.ids[best], at)
		r.slicesLeft[best] = sh.slicesLeft[r.ids[best]]
	}
	return used, true
}
