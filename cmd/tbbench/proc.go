package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// clockTicks is USER_HZ, the unit of the CPU times in /proc/<pid>/stat; it
// is 100 on every Linux architecture Go supports.
const clockTicks = 100

// procCPU is the user and system CPU time process pid has used; 0 when it
// cannot be read.
func procCPU(pid int) time.Duration {
	if pid <= 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name (field 2) may hold spaces; the fields after its
	// closing parenthesis are space-separated. utime and stime are fields
	// 14 and 15.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / clockTicks
}

// machineCPU is the CPU time all CPUs of the machine spent busy (user,
// nice, system, irq, softirq) and stolen by the hypervisor, from
// /proc/stat.
func machineCPU() (busy, steal time.Duration) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0, 0
	}
	v := make([]int64, len(f)-1)
	for i := range v {
		v[i], _ = strconv.ParseInt(f[i+1], 10, 64)
	}
	// user nice system idle iowait irq softirq steal …
	ticks := v[0] + v[1] + v[2] + v[5] + v[6]
	return time.Duration(ticks) * time.Second / clockTicks, time.Duration(v[7]) * time.Second / clockTicks
}

// procStatus returns fields of /proc/<pid>/status in bytes (VmRSS, VmHWM);
// pid 0 is this process.
func procStatus(pid int, field string) int64 {
	path := "/proc/self/status"
	if pid > 0 {
		path = fmt.Sprintf("/proc/%d/status", pid)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(b)) {
		name, rest, ok := strings.Cut(line, ":")
		if !ok || name != field {
			continue
		}
		f := strings.Fields(rest) // "123456 kB"
		if len(f) == 0 {
			return 0
		}
		kb, _ := strconv.ParseInt(f[0], 10, 64)
		return kb << 10
	}
	return 0
}

// child is a server process this tool started: itself in a child mode,
// optionally pinned to a CPU with taskset. It stops when its stdin closes.
type child struct {
	name  string
	cmd   *exec.Cmd
	stdin io.WriteCloser
	ready readyLine
	logs  *logTail
	done  chan struct{}
	err   error // of Wait, once done is closed
}

// readyLine is the one JSON line a child prints on stdout once it serves.
type readyLine struct {
	Error    string `json:"error,omitempty"`
	PID      int    `json:"pid"`
	GRPC     string `json:"grpc,omitempty"`
	HTTP     string `json:"http,omitempty"`
	Gateway  string `json:"gateway,omitempty"`
	Control  string `json:"control"`
	Startup  string `json:"startup,omitempty"`
	EtcdAddr string `json:"etcd,omitempty"`
}

// childReadyTimeout bounds a child's start: a broker restarting on a
// million tokens reads them all before it is ready.
const childReadyTimeout = 5 * time.Minute

// startChild runs this executable with args, pinned to cpu unless it is
// empty, with env added, and waits for its ready line.
func startChild(ctx context.Context, name, cpu string, env []string, args ...string) (*child, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	argv := append([]string{exe}, args...)
	if cpu != "" {
		argv = append([]string{"taskset", "-c", cpu}, argv...)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	c := &child{name: name, cmd: cmd, logs: newLogTail(40), done: make(chan struct{})}
	cmd.Stderr = c.logs
	if c.stdin, err = cmd.StdinPipe(); err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		c.err = cmd.Wait()
		close(c.done)
	}()
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			default:
			}
		}
		close(lines)
	}()
	select {
	case line, ok := <-lines:
		if !ok {
			<-c.done
			return nil, fmt.Errorf("%s exited before it was ready (%v); its last log lines:\n%s", name, c.err, c.logs.String())
		}
		if err := json.Unmarshal([]byte(line), &c.ready); err != nil {
			c.stop()
			return nil, fmt.Errorf("%s: unreadable ready line %q: %w", name, line, err)
		}
		if c.ready.Error != "" {
			c.stop()
			return nil, fmt.Errorf("%s: %s", name, c.ready.Error)
		}
		return c, nil
	case <-time.After(childReadyTimeout):
		c.stop()
		return nil, fmt.Errorf("%s not ready after %s; its last log lines:\n%s", name, childReadyTimeout, c.logs.String())
	case <-ctx.Done():
		c.stop()
		return nil, ctx.Err()
	}
}

// stop closes the child's stdin, which makes it shut down, and kills it if
// it is still running after 15s.
func (c *child) stop() {
	c.stdin.Close()
	select {
	case <-c.done:
	case <-time.After(15 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}

// call sends a request to the child's control listener and decodes the JSON
// answer into out.
func (c *child) call(ctx context.Context, method, path string, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, "http://"+c.ready.Control+path, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", c.name, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s %s: %s: %s", c.name, path, resp.Status, strings.TrimSpace(string(body)))
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(body, out)
}

// logTail counts the lines written to it and keeps the last few.
type logTail struct {
	mu      sync.Mutex
	keep    int
	tail    []string
	partial []byte
	lines   atomic.Int64
}

func newLogTail(keep int) *logTail { return &logTail{keep: keep} }

func (l *logTail) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.partial = append(l.partial, p...)
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			break
		}
		l.lines.Add(1)
		l.tail = append(l.tail, string(l.partial[:i]))
		if len(l.tail) > l.keep {
			l.tail = l.tail[len(l.tail)-l.keep:]
		}
		l.partial = l.partial[i+1:]
	}
	return len(p), nil
}

// Lines is the number of complete lines written so far.
func (l *logTail) Lines() int64 { return l.lines.Load() }

func (l *logTail) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.tail, "\n")
}

// affinity reads the CPU list this process may run on ("0,1", "0-3").
func affinity(pid int) (string, error) {
	out, err := exec.Command("taskset", "-c", "-p", strconv.Itoa(pid)).Output()
	if err != nil {
		return "", err
	}
	_, list, ok := strings.Cut(strings.TrimSpace(string(out)), ": ")
	if !ok {
		return "", fmt.Errorf("taskset: unexpected output %q", out)
	}
	return list, nil
}

// pin moves every thread of process pid to the CPUs in list; threads
// started later inherit it.
func pin(pid int, list string) error {
	out, err := exec.Command("taskset", "-a", "-c", "-p", list, strconv.Itoa(pid)).CombinedOutput()
	if err != nil {
		return fmt.Errorf("taskset -a -c -p %s %d: %v: %s", list, pid, err, out)
	}
	return nil
}

func pinSelf(list string) error { return pin(os.Getpid(), list) }

// cpuList expands "0-2,5" to ["0" "1" "2" "5"].
func cpuList(list string) ([]string, error) {
	var out []string
	for part := range strings.SplitSeq(list, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			return nil, fmt.Errorf("cpu list %q: %w", list, err)
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil {
				return nil, fmt.Errorf("cpu list %q: %w", list, err)
			}
		}
		for i := a; i <= b; i++ {
			out = append(out, strconv.Itoa(i))
		}
	}
	if len(out) == 0 {
		return nil, errors.New("empty cpu list")
	}
	return out, nil
}
