//go:build !linux

package main

import (
	"os"
	"os/exec"
)

func raiseFileLimit()                              {}
func fileLimit() int                               { return 1 << 20 }
func localPortCount() int                          { return 0 }
func selfUsage() (user, sys float64, maxRSS int64) { return 0, 0, 0 }
func childrenUsage() usage                         { return usage{} }
func setWorkerAttrs(cmd *exec.Cmd)                 {}
func isTerminal(f *os.File) bool                   { return false }

type usage struct {
	user, sys float64
	maxRSS    int64
}
