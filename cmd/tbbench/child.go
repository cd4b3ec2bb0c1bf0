package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"syscall"
)

// runChild runs this executable as one of the benchmark's server processes
// ("echo" or "broker") until its stdin closes or it is signalled. It prints
// one JSON line on stdout when it serves (or why it could not).
func runChild(mode string) int {
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin) // the parent closed it, or died
		cancel()
	}()
	control := http.NewServeMux()
	control.HandleFunc("/debug/pprof/", pprof.Index)
	control.HandleFunc("/debug/pprof/profile", pprof.Profile)
	control.HandleFunc("GET /mem", serveMem)
	control.HandleFunc("GET /heap-owners", serveHeapOwners)
	control.HandleFunc("POST /procs", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.Atoi(r.URL.Query().Get("n"))
		if err != nil || n < 1 {
			http.Error(w, "n must be a positive number", http.StatusBadRequest)
			return
		}
		writeJSON(w, runtime.GOMAXPROCS(n))
	})

	announced := false
	ready := func(r readyLine) {
		r.PID = os.Getpid()
		b, _ := json.Marshal(r)
		fmt.Fprintf(os.Stdout, "%s\n", b)
		announced = true
	}
	var err error
	switch mode {
	case "echo":
		err = runEchoChild(ctx, ready, control)
	case "broker":
		err = runBrokerChild(ctx, ready, control)
	case "etcd":
		err = runEtcdChild(ctx, ready, control)
	default:
		err = fmt.Errorf("unknown child mode %q", mode)
	}
	if err == nil {
		return 0
	}
	if !announced {
		b, _ := json.Marshal(readyLine{Error: err.Error()})
		fmt.Fprintf(os.Stdout, "%s\n", b)
	}
	fmt.Fprintf(os.Stderr, "tbbench %s: %v\n", mode, err)
	return 1
}
