package agent

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// A killed agent's carrier calls end with it, as a crashed process's sockets would; a
// call answered before the kill is read in full.
func TestAbortTransportEndsCallsInFlight(t *testing.T) {
	started, left := make(chan struct{}), make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/quick" {
			_, _ = io.WriteString(w, "ok")
			return
		}
		close(started)
		<-r.Context().Done() // hold the call until the client goes away
		close(left)
	}))
	defer srv.Close()
	dead, kill := context.WithCancel(context.Background())
	hc := &http.Client{Transport: &abortTransport{next: http.DefaultTransport, dead: dead}}

	resp, err := hc.Get(srv.URL + "/quick")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if err != nil || string(body) != "ok" {
		t.Fatalf("quick call: %q, %v", body, err)
	}

	errc := make(chan error, 1)
	go func() {
		resp, err := hc.Get(srv.URL + "/hang")
		if err == nil {
			_ = resp.Body.Close()
		}
		errc <- err
	}()
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("the call did not reach the server")
	}
	kill()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("call in flight at the kill: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("call in flight outlived the kill")
	}
	select {
	case <-left:
	case <-time.After(10 * time.Second):
		t.Fatal("the server still holds the call")
	}
}
