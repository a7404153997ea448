package membership

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/memberlist"
)

// Gossip timing profiles.
const (
	// ProfileLAN uses memberlist's DefaultLANConfig timings: failure
	// detection in about 6-7 s on a small cluster, tolerant of busy hosts.
	ProfileLAN = "lan"
	// ProfileFast probes every 400 ms with a 200 ms timeout and a short
	// suspicion window, retransmits updates as often as LAN and pushes full
	// state every 5 s: failure detection in about 1-2.5 s on a quiet
	// network, at the price of more traffic and a higher risk of false
	// deaths on overloaded hosts.
	ProfileFast = "fast"
)

// ErrInvalidConfig is wrapped by every error Validate returns.
var ErrInvalidConfig = errors.New("membership: invalid config")

// Config configures a Membership.
type Config struct {
	// Name is this node's stable, unique name (also its Raft server ID).
	Name string
	// BindAddr is the ip:port gossip listens on (UDP and TCP); port 0
	// picks a free port, reported by GossipAddr.
	BindAddr string
	// AdvertiseAddr is the ip or ip:port other nodes should use to reach
	// this one; empty means derived from BindAddr.
	AdvertiseAddr string
	// Profile selects gossip timings: ProfileLAN or ProfileFast.
	Profile string
	// Meta is the node's initial metadata.
	Meta Meta
	// DeadNodeReclaimTime is how long after a node is declared dead its
	// name may come back from a different address.
	DeadNodeReclaimTime time.Duration
	// SecretKey, when set, encrypts gossip with AES-GCM (16, 24 or 32 bytes).
	SecretKey []byte
	// Transport replaces memberlist's UDP/TCP transport (fault injection in
	// tests). BindAddr is then only used as the default port for joins.
	Transport memberlist.NodeAwareTransport
	// Logger receives membership's and memberlist's logs.
	Logger hclog.Logger
	// JoinRetryInterval is the first wait between join attempts; it doubles
	// after every failed attempt up to JoinRetryMaxInterval.
	JoinRetryInterval time.Duration
	// JoinRetryMaxInterval caps the wait between join attempts.
	JoinRetryMaxInterval time.Duration
	// JoinRetryMax bounds the total time Join keeps retrying (0: until the
	// context ends).
	JoinRetryMax time.Duration
	// BroadcastTimeout bounds how long UpdateMeta waits for the update to
	// be handed to at least one peer.
	BroadcastTimeout time.Duration
	// EventBuffer is how many undelivered events each subscriber may have
	// queued before its queue is replaced by one EventResync.
	EventBuffer int
	// TombstoneTTL is how long dead and departed members stay in Members
	// after their last change.
	TombstoneTTL time.Duration
	// ReconnectInterval is how often the node tries to reach one member it
	// holds Dead (not Left), so that a healed partition merges again
	// (0: never).
	ReconnectInterval time.Duration
}

// DefaultConfig returns a Config with the LAN profile on 0.0.0.0:7946. Name
// must still be set.
func DefaultConfig() Config {
	return Config{
		BindAddr:             "0.0.0.0:7946",
		Profile:              ProfileLAN,
		DeadNodeReclaimTime:  30 * time.Second,
		Logger:               hclog.NewNullLogger(),
		JoinRetryInterval:    time.Second,
		JoinRetryMaxInterval: 30 * time.Second,
		JoinRetryMax:         5 * time.Minute,
		BroadcastTimeout:     5 * time.Second,
		EventBuffer:          256,
		TombstoneTTL:         24 * time.Hour,
		ReconnectInterval:    10 * time.Second,
	}
}

// maxNameLen bounds node names; they are also Raft server IDs and appear in
// URLs and logs.
const maxNameLen = 128

// Validate reports the first problem with c, wrapping ErrInvalidConfig.
func (c Config) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalidConfig, fmt.Sprintf(format, args...))
	}
	if c.Name == "" {
		return bad("name is required")
	}
	if len(c.Name) > maxNameLen {
		return bad("name longer than %d bytes", maxNameLen)
	}
	if _, _, err := splitHostPort(c.BindAddr, true); err != nil {
		return bad("bind address %q: %v", c.BindAddr, err)
	}
	if c.AdvertiseAddr != "" {
		if _, _, err := splitHostPort(c.AdvertiseAddr, false); err != nil {
			return bad("advertise address %q: %v", c.AdvertiseAddr, err)
		}
	}
	if c.Profile != ProfileLAN && c.Profile != ProfileFast {
		return bad("profile %q is not %q or %q", c.Profile, ProfileLAN, ProfileFast)
	}
	if _, err := EncodeMeta(c.Meta); err != nil {
		return bad("meta: %v", err)
	}
	if c.Meta.Leaving {
		return bad("meta: Leaving is set only by Leave")
	}
	if c.DeadNodeReclaimTime < 0 {
		return bad("dead node reclaim time is negative")
	}
	switch len(c.SecretKey) {
	case 0, 16, 24, 32:
	default:
		return bad("secret key is %d bytes, want 16, 24 or 32", len(c.SecretKey))
	}
	if c.JoinRetryInterval <= 0 {
		return bad("join retry interval must be positive")
	}
	if c.JoinRetryMaxInterval < c.JoinRetryInterval {
		return bad("join retry max interval is below the retry interval")
	}
	if c.JoinRetryMax < 0 {
		return bad("join retry max is negative")
	}
	if c.BroadcastTimeout <= 0 {
		return bad("broadcast timeout must be positive")
	}
	if c.EventBuffer <= 0 {
		return bad("event buffer must be positive")
	}
	if c.TombstoneTTL <= 0 {
		return bad("tombstone TTL must be positive")
	}
	if c.ReconnectInterval < 0 {
		return bad("reconnect interval is negative")
	}
	return nil
}

// splitHostPort parses "ip:port", or a bare "ip" (port 0) when needPort is
// false. The host must be an IP literal; port 0 is allowed.
func splitHostPort(addr string, needPort bool) (net.IP, int, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		if needPort {
			return nil, 0, err
		}
		host, portStr = addr, "0"
	}
	ip := net.ParseIP(host)
	if ip == nil {
		return nil, 0, fmt.Errorf("host %q is not an IP address", host)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 0 || port > 65535 {
		return nil, 0, fmt.Errorf("bad port %q", portStr)
	}
	return ip, port, nil
}

// memberlistConfig builds the memberlist configuration for c (already
// validated). Delegates are attached by New.
func (c Config) memberlistConfig() *memberlist.Config {
	var mc *memberlist.Config
	switch c.Profile {
	case ProfileFast:
		mc = memberlist.DefaultLocalConfig()
		mc.ProbeInterval = 400 * time.Millisecond
		mc.ProbeTimeout = 200 * time.Millisecond
		mc.SuspicionMult = 2
		mc.GossipInterval = 100 * time.Millisecond
		// DefaultLocalConfig retransmits each update only 2*log10(n+1)
		// times, which on a 4-node cluster can miss a member until the next
		// push/pull; LAN's multiplier and a shorter push/pull bound that.
		mc.RetransmitMult = 4
		mc.PushPullInterval = 5 * time.Second
	default:
		mc = memberlist.DefaultLANConfig()
	}
	mc.Name = c.Name
	bindIP, bindPort, _ := splitHostPort(c.BindAddr, true)
	mc.BindAddr = bindIP.String()
	mc.BindPort = bindPort
	mc.AdvertisePort = bindPort
	if c.AdvertiseAddr != "" {
		ip, port, _ := splitHostPort(c.AdvertiseAddr, false)
		mc.AdvertiseAddr = ip.String()
		if port != 0 {
			mc.AdvertisePort = port
		}
	} else if !bindIP.IsUnspecified() {
		mc.AdvertiseAddr = bindIP.String()
	}
	mc.DeadNodeReclaimTime = c.DeadNodeReclaimTime
	if len(c.SecretKey) > 0 {
		mc.SecretKey = append([]byte(nil), c.SecretKey...)
	}
	if c.Transport != nil {
		mc.Transport = c.Transport
	}
	return mc
}
