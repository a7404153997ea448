package membership

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/memberlist"
)

// ErrBlocked is returned when a FaultTransport refuses to dial a blocked
// address.
var ErrBlocked = errors.New("membership: address blocked by fault injection")

// FaultTransport is memberlist's UDP/TCP transport on real sockets with
// switchable faults, for partition tests: traffic this node sends to a
// blocked gossip address is dropped (UDP) or refused (TCP dials). Block each
// side on the other to partition two nodes; Unblock to heal. Pass it as
// Config.Transport, with Config.BindAddr set to Addr().
type FaultTransport struct {
	*memberlist.NetTransport
	addr string

	mu      sync.RWMutex
	blocked map[string]bool
}

// NewFaultTransport listens on bindAddr (ip:port; port 0 picks a free one).
func NewFaultTransport(bindAddr string, logger hclog.Logger) (*FaultTransport, error) {
	ip, port, err := splitHostPort(bindAddr, true)
	if err != nil {
		return nil, fmt.Errorf("membership: fault transport address %q: %w", bindAddr, err)
	}
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	nt, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{
		BindAddrs: []string{ip.String()},
		BindPort:  port,
		Logger:    logger.StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true}),
	})
	if err != nil {
		return nil, fmt.Errorf("membership: fault transport on %s: %w", bindAddr, err)
	}
	if port == 0 {
		port = nt.GetAutoBindPort()
	}
	return &FaultTransport{
		NetTransport: nt,
		addr:         net.JoinHostPort(ip.String(), strconv.Itoa(port)),
		blocked:      make(map[string]bool),
	}, nil
}

// Addr returns the ip:port the transport listens on.
func (t *FaultTransport) Addr() string { return t.addr }

// Block drops everything this node sends to the given gossip addresses.
func (t *FaultTransport) Block(addrs ...string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, a := range addrs {
		t.blocked[a] = true
	}
}

// Unblock lifts Block for the given addresses.
func (t *FaultTransport) Unblock(addrs ...string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, a := range addrs {
		delete(t.blocked, a)
	}
}

// UnblockAll lifts every Block.
func (t *FaultTransport) UnblockAll() {
	t.mu.Lock()
	defer t.mu.Unlock()
	clear(t.blocked)
}

func (t *FaultTransport) isBlocked(addr string) bool {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.blocked[addr]
}

// WriteTo implements memberlist.Transport.
func (t *FaultTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	return t.WriteToAddress(b, memberlist.Address{Addr: addr})
}

// WriteToAddress implements memberlist.NodeAwareTransport; packets to a
// blocked address are silently dropped, as a lossy network would.
func (t *FaultTransport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	if t.isBlocked(a.Addr) {
		return time.Now(), nil
	}
	return t.NetTransport.WriteToAddress(b, a)
}

// DialTimeout implements memberlist.Transport.
func (t *FaultTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	return t.DialAddressTimeout(memberlist.Address{Addr: addr}, timeout)
}

// DialAddressTimeout implements memberlist.NodeAwareTransport; dials to a
// blocked address fail with ErrBlocked.
func (t *FaultTransport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	if t.isBlocked(a.Addr) {
		return nil, fmt.Errorf("dial %s: %w", a.Addr, ErrBlocked)
	}
	return t.NetTransport.DialAddressTimeout(a, timeout)
}

var _ memberlist.NodeAwareTransport = (*FaultTransport)(nil)
