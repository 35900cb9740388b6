package cluster

import (
	"net"
	"strconv"
	"testing"
)

func TestFreePortsAreBelowTheEphemeralRange(t *testing.T) {
	low, err := ephemeralLow()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[int]bool{}
	for range 20 {
		ports, err := FreePorts(5)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range ports {
			if p < lowestPort || p >= low {
				t.Errorf("port %d outside [%d, %d): a connect() could take it", p, lowestPort, low)
			}
			if seen[p] {
				t.Errorf("port %d handed out twice", p)
			}
			seen[p] = true
			// Free to bind right away.
			l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
			if err != nil {
				t.Errorf("port %d not free: %v", p, err)
				continue
			}
			_ = l.Close()
		}
	}
}

func TestPickPortsSkipsPortsInUseAndHandedOut(t *testing.T) {
	low, err := ephemeralLow()
	if err != nil {
		t.Fatal(err)
	}
	// Find four consecutive free ports below the range and hold the second.
	var from int
	var held net.Listener
	for p := lowestPort; p+4 < low && held == nil; p += 4 {
		free := true
		for q := p; q < p+4; q++ {
			l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(q)))
			if err != nil {
				free = false
				break
			}
			_ = l.Close()
		}
		if !free {
			continue
		}
		if held, err = net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p+1))); err == nil {
			from = p
		}
	}
	if held == nil {
		t.Fatal("no four free consecutive ports to test with")
	}
	defer func() { _ = held.Close() }()

	first, err := pickPorts(from, from+4, 3)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range first {
		if p == from+1 {
			t.Fatalf("pickPorts returned %d, which a listener holds", p)
		}
	}
	// Every free port of the window is handed out now: a second pick finds none,
	// even though nothing listens on them.
	if got, err := pickPorts(from, from+4, 1); err == nil {
		t.Fatalf("pickPorts handed out %v again", got)
	}
}
