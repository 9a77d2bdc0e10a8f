//go:build linux

package main

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// raiseFileLimit lifts the soft open-file limit to the hard one.
func raiseFileLimit() {
	var r unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &r) == nil && r.Cur < r.Max {
		r.Cur = r.Max
		_ = unix.Setrlimit(unix.RLIMIT_NOFILE, &r)
	}
}

// fileLimit is the soft open-file limit.
func fileLimit() int {
	var r unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &r); err != nil || r.Cur > 1<<30 {
		return 1 << 20
	}
	return int(r.Cur)
}

// localPortCount is the size of the ephemeral port range (0 if unknown).
func localPortCount() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0
	}
	lo, err1 := strconv.Atoi(f[0])
	hi, err2 := strconv.Atoi(f[1])
	if err1 != nil || err2 != nil || hi < lo {
		return 0
	}
	return hi - lo + 1
}

// usage is CPU time (seconds) and peak RSS (bytes).
type usage struct {
	user, sys float64
	maxRSS    int64
}

func getUsage(who int) usage {
	var ru unix.Rusage
	if unix.Getrusage(who, &ru) != nil {
		return usage{}
	}
	return usage{
		user:   float64(ru.Utime.Sec) + float64(ru.Utime.Usec)/1e6,
		sys:    float64(ru.Stime.Sec) + float64(ru.Stime.Usec)/1e6,
		maxRSS: ru.Maxrss * 1024,
	}
}

// selfUsage is this process's CPU time and peak RSS. The peak comes from
// /proc/self/status (VmHWM): getrusage's ru_maxrss survives execve, so a
// worker would report at least its parent's peak.
func selfUsage() (user, sys float64, maxRSS int64) {
	u := getUsage(unix.RUSAGE_SELF)
	return u.user, u.sys, peakRSS(u.maxRSS)
}

func peakRSS(fallback int64) int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return fallback
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			f := strings.Fields(v)
			if len(f) >= 1 {
				if kb, err := strconv.ParseInt(f[0], 10, 64); err == nil {
					return kb * 1024
				}
			}
		}
	}
	return fallback
}

// childrenUsage is the CPU time of this process's waited-for children.
func childrenUsage() usage { return getUsage(unix.RUSAGE_CHILDREN) }

// setWorkerAttrs puts a worker in its own process group (a terminal's
// Ctrl-C goes to the coordinator only) and has the kernel kill it if the
// coordinator dies.
func setWorkerAttrs(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// isTerminal reports whether f is a terminal.
func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
