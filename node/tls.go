package node

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/hashicorp/raft"
)

// tlsBundle holds the TLS configurations built from the certificate files.
type tlsBundle struct {
	// raftServer requires and verifies a client certificate (mutual TLS).
	raftServer *tls.Config
	// httpServer verifies a client certificate when one is sent: the internal endpoints
	// accept a verified one instead of an HMAC signature, operators' clients need none.
	httpServer *tls.Config
	// client presents this node's certificate and trusts only the cluster CA.
	client *tls.Config
}

func (c Config) tlsEnabled() bool {
	return c.TLSCertFile != "" || c.TLSKeyFile != "" || c.TLSCAFile != ""
}

// loadTLS reads the certificate, key and CA files.
func loadTLS(c Config) (*tlsBundle, error) {
	if !c.tlsEnabled() {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(c.TLSCertFile, c.TLSKeyFile)
	if err != nil {
		return nil, fmt.Errorf("%w: tls certificate: %v", ErrInvalidConfig, err)
	}
	caPEM, err := os.ReadFile(c.TLSCAFile)
	if err != nil {
		return nil, fmt.Errorf("%w: tls ca: %v", ErrInvalidConfig, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("%w: tls ca %s: no PEM certificate found", ErrInvalidConfig, c.TLSCAFile)
	}
	base := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{cert},
		RootCAs:      pool,
		ClientCAs:    pool,
	}
	b := &tlsBundle{raftServer: base.Clone(), httpServer: base.Clone(), client: base.Clone()}
	b.raftServer.ClientAuth = tls.RequireAndVerifyClientCert
	b.httpServer.ClientAuth = tls.VerifyClientCertIfGiven
	return b, nil
}

// tlsStream is the Raft stream layer over TLS with mutual authentication: both ends
// present a certificate signed by the cluster CA.
type tlsStream struct {
	ln     net.Listener
	server *tls.Config
	client *tls.Config
}

func (t *tlsStream) Accept() (net.Conn, error) {
	c, err := t.ln.Accept()
	if err != nil {
		return nil, err
	}
	// The handshake runs on the first read, in the connection's own goroutine, so a slow
	// or plain-text peer cannot stall the accept loop.
	return tls.Server(c, t.server), nil
}

func (t *tlsStream) Close() error   { return t.ln.Close() }
func (t *tlsStream) Addr() net.Addr { return t.ln.Addr() }

func (t *tlsStream) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	host, _, err := net.SplitHostPort(string(addr))
	if err != nil {
		return nil, err
	}
	c, err := net.DialTimeout("tcp", string(addr), timeout)
	if err != nil {
		return nil, err
	}
	cfg := t.client.Clone()
	cfg.ServerName = host
	tc := tls.Client(c, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("raft tls handshake with %s: %w", addr, err)
	}
	return tc, nil
}

// validateSecurity checks the TLS file settings and the admin token.
func (c Config) validateSecurity() error {
	var errs []error
	if c.tlsEnabled() && (c.TLSCertFile == "" || c.TLSKeyFile == "" || c.TLSCAFile == "") {
		errs = append(errs, errors.New("tls needs a certificate, a key and a CA file"))
	}
	if c.AdminToken != "" && len(c.AdminToken) < 16 {
		errs = append(errs, errors.New("admin token is shorter than 16 characters"))
	}
	return errors.Join(errs...)
}
