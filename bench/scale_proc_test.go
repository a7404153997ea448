//go:build linux

package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// scaleSecret authenticates requests forwarded between the agents, as in production.
const scaleSecret = "scale-benchmark-cluster-secret"

// scaleAgent is one `cardsync agent` OS process with its addresses, data directory and
// log file (stdout and stderr, appended across restarts).
type scaleAgent struct {
	name    string
	dataDir string
	logPath string
	gossip  string
	raft    string
	http    string

	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited and been reaped
}

// scaleCluster runs three agents of the real binary on 127.0.0.1.
type scaleCluster struct {
	tb     testing.TB
	bin    string
	root   string
	poll   time.Duration
	agents []*scaleAgent
	client *http.Client
}

// buildCardsync builds cmd/cardsync (through the bench module's replace of cardsync) into dir.
func buildCardsync(tb testing.TB, dir string) string {
	tb.Helper()
	bin := filepath.Join(dir, "cardsync")
	cmd := exec.Command("go", "build", "-o", bin, "cardsync/cmd/cardsync")
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("go build cardsync/cmd/cardsync: %v\n%s", err, out)
	}
	return bin
}

// scaleFreePort returns a port free for both TCP and UDP on 127.0.0.1 (gossip uses both).
func scaleFreePort(tb testing.TB) int {
	tb.Helper()
	for i := 0; i < 50; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		u, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
		l.Close()
		if err == nil {
			u.Close()
			return port
		}
	}
	tb.Fatal("no free TCP+UDP port on 127.0.0.1")
	return 0
}

// newScaleCluster starts three agents (bootstrap-expect 3, joining the first one's
// gossip address, fast membership profile) and waits until they form one cluster.
func newScaleCluster(tb testing.TB, bin string, poll time.Duration) *scaleCluster {
	tb.Helper()
	c := &scaleCluster{tb: tb, bin: bin, root: tb.TempDir(), poll: poll,
		client: &http.Client{Timeout: 15 * time.Minute}}
	for i := 0; i < 3; i++ {
		name := fmt.Sprintf("n%d", i+1)
		a := &scaleAgent{
			name:    name,
			dataDir: filepath.Join(c.root, name, "data"),
			logPath: filepath.Join(c.root, name+".log"),
			gossip:  fmt.Sprintf("127.0.0.1:%d", scaleFreePort(tb)),
			raft:    fmt.Sprintf("127.0.0.1:%d", scaleFreePort(tb)),
			http:    fmt.Sprintf("127.0.0.1:%d", scaleFreePort(tb)),
		}
		c.agents = append(c.agents, a)
	}
	tb.Cleanup(c.close)
	for _, a := range c.agents {
		c.start(a)
	}
	c.waitFormed(2 * time.Minute)
	return c
}

// start execs the agent with its flags; the seed (first agent) joins nobody.
func (c *scaleCluster) start(a *scaleAgent) {
	c.tb.Helper()
	if err := os.MkdirAll(a.dataDir, 0o755); err != nil {
		c.tb.Fatal(err)
	}
	logf, err := os.OpenFile(a.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		c.tb.Fatal(err)
	}
	args := []string{"agent", "-name", a.name, "-data-dir", a.dataDir,
		"-bind", a.gossip, "-raft-addr", a.raft, "-http-addr", a.http,
		"-bootstrap-expect", "3", "-profile", "fast", "-cluster-secret", scaleSecret,
		"-poll-interval", c.poll.String(), "-log-level", "info"}
	// The first start joins the seed (the first agent); a restart joins every other
	// agent, as an operator replacing a node would.
	for _, o := range c.agents {
		if o != a && (a.cmd != nil || o == c.agents[0]) {
			args = append(args, "-join", o.gossip)
		}
	}
	cmd := exec.Command(c.bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// The agent dies with the benchmark process even if cleanups never run.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		c.tb.Fatalf("start %s: %v", a.name, err)
	}
	a.cmd = cmd
	a.done = make(chan struct{})
	go func(done chan struct{}) {
		_ = cmd.Wait()
		logf.Close()
		close(done)
	}(a.done)
}

// kill sends SIGKILL to the agent and waits until it has exited.
func (c *scaleCluster) kill(a *scaleAgent) {
	if a.cmd == nil || a.cmd.Process == nil {
		return
	}
	select {
	case <-a.done:
		return
	default:
	}
	_ = a.cmd.Process.Kill()
	select {
	case <-a.done:
	case <-time.After(30 * time.Second):
		c.tb.Errorf("%s (pid %d) did not exit 30 s after SIGKILL", a.name, a.cmd.Process.Pid)
	}
}

func (a *scaleAgent) alive() bool {
	if a.done == nil {
		return false
	}
	select {
	case <-a.done:
		return false
	default:
		return true
	}
}

func (a *scaleAgent) pid() int { return a.cmd.Process.Pid }

// close kills every agent, copies the logs to $SCALE_LOGDIR when it is set and, when
// the benchmark failed, prints the tail of each log.
func (c *scaleCluster) close() {
	for _, a := range c.agents {
		c.kill(a)
	}
	if dir := os.Getenv("SCALE_LOGDIR"); dir != "" {
		for _, a := range c.agents {
			if data, err := os.ReadFile(a.logPath); err == nil {
				_ = os.WriteFile(filepath.Join(dir, fmt.Sprintf("%s-%s.log", strings.ReplaceAll(c.tb.Name(), "/", "_"), a.name)), data, 0o644)
			}
		}
	}
	if c.tb.Failed() {
		for _, a := range c.agents {
			c.tb.Logf("---- last lines of %s (%s) ----\n%s", a.name, a.logPath, scaleTail(a.logPath, 40))
		}
	}
}

// scaleTail returns the last n lines of a file.
func scaleTail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// scaleLogCount counts the lines of an agent's log that contain substr.
func scaleLogCount(path, substr string) int {
	f, err := os.Open(path)
	if err != nil {
		return 0
	}
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		if bytes.Contains(sc.Bytes(), []byte(substr)) {
			n++
		}
	}
	return n
}

// scaleWait polls cond until it holds or the deadline passes; cond's string says what
// was last seen, for the failure message.
func scaleWait(tb testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	last := ""
	for {
		ok, seen := cond()
		if ok {
			return
		}
		if seen != "" {
			last = seen
		}
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %v waiting for %s (last seen: %s)", timeout, what, last)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// scaleStatus is the part of GET /v1/status the benchmark reads.
type scaleStatus struct {
	Node         string `json:"node"`
	Leader       string `json:"leader"`
	RaftState    string `json:"raft_state"`
	AppliedIndex uint64 `json:"applied_index"`
	CommitIndex  uint64 `json:"commit_index"`
	LastIndex    uint64 `json:"last_index"`
	Ready        bool   `json:"ready"`
	Voters       int    `json:"voters"`
	AliveMembers int    `json:"alive_members"`
	RingMembers  int    `json:"ring_members"`
}

func (c *scaleCluster) getJSON(addr, path string, v any) error {
	resp, err := c.client.Get("http://" + addr + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %d %s", path, resp.StatusCode, bytes.TrimSpace(body))
	}
	return json.Unmarshal(body, v)
}

// post sends body to addr+path and decodes a 200 answer into v (when v is not nil).
func (c *scaleCluster) post(ctx context.Context, addr, path, contentType string, body io.Reader, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", contentType)
	resp, err := c.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		if len(out) > 2000 {
			out = out[:2000]
		}
		return fmt.Errorf("POST %s: %d %s", path, resp.StatusCode, bytes.TrimSpace(out))
	}
	if v != nil {
		return json.Unmarshal(out, v)
	}
	return nil
}

func (c *scaleCluster) postJSON(ctx context.Context, addr, path string, payload, v any) error {
	body, err := json.Marshal(payload)
	if err != nil {
		return err
	}
	return c.post(ctx, addr, path, "application/json", bytes.NewReader(body), v)
}

func (c *scaleCluster) status(a *scaleAgent) (scaleStatus, error) {
	var s scaleStatus
	err := c.getJSON(a.http, "/v1/status", &s)
	return s, err
}

// metrics reads an agent's /metrics into series -> value (series with their labels as
// written, e.g. `cardsync_shards_by_state{state="due"}`).
func (c *scaleCluster) metrics(a *scaleAgent) (map[string]float64, error) {
	resp, err := c.client.Get("http://" + a.http + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %d", resp.StatusCode)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		out[line[:i]] = v
	}
	return out, sc.Err()
}

// cards is the card count of an agent's replica (the cardsync_cards gauge).
func (c *scaleCluster) cards(a *scaleAgent) (int, error) {
	m, err := c.metrics(a)
	if err != nil {
		return 0, err
	}
	v, ok := m["cardsync_cards"]
	if !ok {
		return 0, fmt.Errorf("no cardsync_cards in /metrics")
	}
	return int(v), nil
}

// waitFormed waits until every agent is ready, sees 3 voters, 3 ring members and the
// same leader.
func (c *scaleCluster) waitFormed(timeout time.Duration) {
	c.tb.Helper()
	scaleWait(c.tb, timeout, "3 ready voters agreeing on a leader", func() (bool, string) {
		leader := ""
		for _, a := range c.agents {
			if !a.alive() {
				c.tb.Fatalf("%s exited:\n%s", a.name, scaleTail(a.logPath, 40))
			}
			s, err := c.status(a)
			if err != nil {
				return false, a.name + ": " + err.Error()
			}
			if !s.Ready || s.Voters != 3 || s.RingMembers != 3 || s.Leader == "" {
				return false, fmt.Sprintf("%s: %+v", a.name, s)
			}
			if leader != "" && s.Leader != leader {
				return false, "leaders differ"
			}
			leader = s.Leader
		}
		return true, ""
	})
}

// leader returns the agent every member names as the Raft leader.
func (c *scaleCluster) leader() *scaleAgent {
	c.tb.Helper()
	var out *scaleAgent
	scaleWait(c.tb, time.Minute, "a leader", func() (bool, string) {
		s, err := c.status(c.agents[0])
		if err != nil {
			return false, err.Error()
		}
		for _, a := range c.agents {
			if a.name == s.Leader && a.alive() {
				out = a
				return true, ""
			}
		}
		return false, "leader " + s.Leader
	})
	return out
}

// follower returns an agent that is not the leader.
func (c *scaleCluster) follower() *scaleAgent {
	l := c.leader()
	for _, a := range c.agents {
		if a != l {
			return a
		}
	}
	return l
}

// waitCards waits until every agent's replica holds n cards.
func (c *scaleCluster) waitCards(n int, timeout time.Duration) {
	c.tb.Helper()
	for _, a := range c.agents {
		scaleWait(c.tb, timeout, fmt.Sprintf("%s to hold %d cards", a.name, n), func() (bool, string) {
			got, err := c.cards(a)
			if err != nil {
				return false, err.Error()
			}
			return got == n, fmt.Sprintf("%d cards", got)
		})
	}
}

// scaleProcStatusKB reads a field such as VmRSS or VmHWM from /proc/<pid>/status in KiB.
func scaleProcStatusKB(pid int, field string) (float64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			f := strings.Fields(rest)
			if len(f) == 0 {
				break
			}
			return strconv.ParseFloat(f[0], 64)
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}

// scaleProcCPU is the user+system CPU time the process has used (/proc/<pid>/stat).
func scaleProcCPU(pid int) (time.Duration, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name is in parentheses and may hold spaces: fields start after the last ')'.
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:])
	// After the name: state(3) ppid(4) ... utime is field 14 and stime field 15 of the line.
	if len(f) < 13 {
		return 0, fmt.Errorf("short /proc/%d/stat", pid)
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("malformed /proc/%d/stat times", pid)
	}
	const clkTck = 100 // USER_HZ on Linux
	return time.Duration(ut+st) * time.Second / clkTck, nil
}
