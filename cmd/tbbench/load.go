package main

import (
	"context"
	"fmt"
	"math/bits"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// histogram records durations in log-linear buckets: 64 per power of two,
// so that a percentile read from it is within 1.6% of the true value. It is
// owned by one goroutine; merge combines them afterwards.
type histogram struct {
	counts [64 * 42]uint64
	n      uint64
}

func bucketOf(ns uint64) int {
	if ns < 64 {
		return int(ns)
	}
	e := bits.Len64(ns) - 7 // ns>>e is in [64, 128)
	return (e+1)*64 + int(ns>>e) - 64
}

// lowerBound is the smallest duration of bucket i.
func lowerBound(i int) uint64 {
	if i < 64 {
		return uint64(i)
	}
	e := i/64 - 1
	return uint64(64+i%64) << e
}

func (h *histogram) add(d time.Duration) {
	i := bucketOf(uint64(max(d, 0)))
	if i >= len(h.counts) {
		i = len(h.counts) - 1
	}
	h.counts[i]++
	h.n++
}

func (h *histogram) merge(o *histogram) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
}

// quantile returns the duration below which a fraction q of the recorded
// durations lie (the middle of the bucket holding that rank).
func (h *histogram) quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(q*float64(h.n) + 0.5)
	rank = min(max(rank, 1), h.n)
	var cum uint64
	for i, c := range h.counts {
		cum += c
		if cum >= rank {
			lo, hi := lowerBound(i), lowerBound(i+1)
			return time.Duration(lo + (hi-lo)/2)
		}
	}
	return 0
}

// sample is what one round of one target measured.
type sample struct {
	calls    uint64
	errors   uint64
	firstErr error
	elapsed  time.Duration
	hist     histogram
	// serverCPU and loadCPU are the CPU time the server process and this
	// process used during the measured window, as a fraction of one core.
	serverCPU float64
	loadCPU   float64
	// otherCPU is what the rest of the machine used meanwhile (other
	// processes, the kernel's work for none of them), and stolenCPU what
	// the hypervisor took, in cores.
	otherCPU  float64
	stolenCPU float64
}

func (s *sample) rps() float64 {
	if s.elapsed <= 0 {
		return 0
	}
	return float64(s.calls) / s.elapsed.Seconds()
}

func (s *sample) p50() time.Duration { return s.hist.quantile(0.50) }
func (s *sample) p99() time.Duration { return s.hist.quantile(0.99) }

// caller makes one call; it is used by one goroutine only.
type caller func(ctx context.Context) error

// roundSpec says how long a round warms up and measures, and whose CPU time
// to account.
type roundSpec struct {
	warmup, measure time.Duration
	serverPID       int
}

// runRound runs every caller in its own goroutine, closed loop, for the
// warm-up and then the measured window, and returns what completed within
// the window. A caller's error is counted and the caller goes on.
func runRound(ctx context.Context, callers []caller, spec roundSpec) *sample {
	var (
		measuring atomic.Bool
		stop      atomic.Bool
		wg        sync.WaitGroup
		mu        sync.Mutex
		total     = &sample{}
	)
	for _, call := range callers {
		wg.Go(func() {
			local := &sample{}
			for !stop.Load() {
				t0 := time.Now()
				err := call(ctx)
				d := time.Since(t0)
				if !measuring.Load() {
					continue
				}
				if err != nil {
					local.errors++
					if local.firstErr == nil {
						local.firstErr = err
					}
					continue
				}
				local.calls++
				local.hist.add(d)
			}
			mu.Lock()
			defer mu.Unlock()
			total.calls += local.calls
			total.errors += local.errors
			if total.firstErr == nil {
				total.firstErr = local.firstErr
			}
			total.hist.merge(&local.hist)
		})
	}
	sleep(ctx, spec.warmup)
	srv0, load0 := procCPU(spec.serverPID), selfCPU()
	busy0, steal0 := machineCPU()
	start := time.Now()
	measuring.Store(true)
	sleep(ctx, spec.measure)
	measuring.Store(false)
	total.elapsed = time.Since(start)
	srv1, load1 := procCPU(spec.serverPID), selfCPU()
	busy1, steal1 := machineCPU()
	stop.Store(true)
	wg.Wait()
	if spec.serverPID > 0 {
		total.serverCPU = (srv1 - srv0).Seconds() / total.elapsed.Seconds()
	}
	total.loadCPU = (load1 - load0).Seconds() / total.elapsed.Seconds()
	total.otherCPU = max((busy1-busy0).Seconds()/total.elapsed.Seconds()-total.serverCPU-total.loadCPU, 0)
	total.stolenCPU = (steal1 - steal0).Seconds() / total.elapsed.Seconds()
	return total
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// selfCPU is the user and system CPU time this process has used.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func (s *sample) check(what string) error {
	if s.errors > 0 {
		return fmt.Errorf("%s: %d of %d calls failed; first: %w", what, s.errors, s.errors+s.calls, s.firstErr)
	}
	if s.calls == 0 {
		return fmt.Errorf("%s: no call completed", what)
	}
	return nil
}
