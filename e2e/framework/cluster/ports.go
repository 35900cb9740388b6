package cluster

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
)

// The ports a component is told to listen on are chosen below the kernel's
// ephemeral range. A port taken with "127.0.0.1:0" and released comes from that
// range, and every outgoing connection on the machine (each component's client to
// the API server, a test's gRPC dial) takes its source port from the same range:
// between the release and the component's bind, one of them can take it, and the
// plugin then fails to start with "bind: address already in use" (seen in a
// `make e2e` run beside other work). No connect() ever picks a port below the
// range, so a port found free there stays free until someone binds it on purpose.
const lowestPort = 10000

var (
	portsMu sync.Mutex
	// handedOut holds every port this process has handed out, so that a port a
	// stopped component has just released is never given to the next one while
	// the old one may still be closing.
	handedOut = map[int]bool{}
)

// FreePorts reserves n distinct loopback ports for components to listen on: ports
// below the kernel's ephemeral range that nothing listens on now and that this
// process has not handed out before.
func FreePorts(n int) ([]int, error) {
	low, err := ephemeralLow()
	if err != nil {
		return nil, err
	}
	if low-lowestPort < 100*n {
		return nil, fmt.Errorf("the ephemeral port range starts at %d: too few ports below it to choose %d from", low, n)
	}
	return pickPorts(lowestPort, low, n)
}

// pickPorts picks n loopback ports in [from, to) that nothing listens on and that
// this process has not handed out.
func pickPorts(from, to, n int) ([]int, error) {
	portsMu.Lock()
	defer portsMu.Unlock()
	var ports []int
	var listeners []net.Listener
	defer func() {
		// The ports are free again either way; a listener that fails to close
		// would keep its port, and the component taking it reports that.
		for _, l := range listeners {
			_ = l.Close()
		}
	}()
	span := to - from
	// A random start keeps two test processes (say the e2e suite and the
	// real-node suite) from walking the same sequence.
	start := rand.IntN(span)
	for i := 0; i < span && len(ports) < n; i++ {
		port := from + (start+i)%span
		if handedOut[port] {
			continue
		}
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue
		}
		listeners = append(listeners, l)
		ports = append(ports, port)
	}
	if len(ports) < n {
		return nil, fmt.Errorf("found only %d free loopback ports between %d and %d, need %d", len(ports), from, to, n)
	}
	for _, p := range ports {
		handedOut[p] = true
	}
	return ports, nil
}

// ephemeralLow is the first port of the kernel's ephemeral range
// (net.ipv4.ip_local_port_range), which also applies to IPv6.
func ephemeralLow() (int, error) {
	const path = "/proc/sys/net/ipv4/ip_local_port_range"
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return 32768, nil // Linux's default, for hosts without procfs
	}
	if err != nil {
		return 0, fmt.Errorf("read the ephemeral port range: %w", err)
	}
	fields := strings.Fields(string(b))
	if len(fields) != 2 {
		return 0, fmt.Errorf("%s: want two ports, got %q", path, strings.TrimSpace(string(b)))
	}
	low, err := strconv.Atoi(fields[0])
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	return low, nil
}
