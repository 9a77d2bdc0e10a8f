package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"syscall"
)

func main() {
	os.Exit(Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// Main runs flood with args and returns the exit status: 0 done, 1 the run
// could not be carried out, 2 bad usage, 3 a correctness failure (churn
// gaps). Tests call it directly.
func Main(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	raiseFileLimit()
	if _, ok := stderr.(*os.File); !ok {
		// Worker processes' stderr is copied by a goroutine each.
		stderr = &lockedWriter{w: stderr}
	}
	helpOut := stderr
	for _, a := range args {
		if a == "-h" || a == "-help" || a == "--help" {
			helpOut = stdout
		}
	}
	cfg, err := parseArgs(args, helpOut)
	if errors.Is(err, errHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "flood:", err)
		return 2
	}
	if cfg.WorkerIndex >= 0 {
		signal.Ignore(os.Interrupt)
		if err := runWorker(stdin, stdout); err != nil {
			fmt.Fprintf(stderr, "flood: worker %d: %v\n", cfg.WorkerIndex, err)
			return 1
		}
		return 0
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() { <-ctx.Done(); stop() }() // a second Ctrl-C kills at once
	return runCoordinator(ctx, cfg, stdout, stderr)
}

// runCoordinator runs the flood described by cfg until it ends or ctx
// ends, then prints and writes the results.
func runCoordinator(ctx context.Context, cfg *Config, stdout, stderr io.Writer) int {
	var prog *progressLine
	if f, ok := stderr.(*os.File); cfg.Progress == "on" || (cfg.Progress == "auto" && ok && isTerminal(f)) {
		prog = &progressLine{w: stderr, mode: cfg.Mode}
	}
	rep, err := coordinate(ctx, cfg, stderr, prog)
	if err != nil {
		fmt.Fprintln(stderr, "flood:", err)
		return 1
	}
	printTable(stdout, rep)
	status := rep.exitCode()
	if cfg.JSONFile != "" {
		if err := writeJSON(cfg.JSONFile, rep); err != nil {
			fmt.Fprintln(stderr, "flood: --json:", err)
			status = max(status, 1)
		}
	}
	if cfg.ReportFile != "" {
		if err := writeReport(cfg.ReportFile, rep); err != nil {
			fmt.Fprintln(stderr, "flood: --report:", err)
			status = max(status, 1)
		}
	}
	return status
}

// lockedWriter serializes writes to w.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
