// Copyright 2026 fanout authors. Licensed under the Apache License 2.0.

//go:build darwin || netbsd || freebsd || openbsd || dragonfly

package netpoll

import "syscall"

// acceptCloexec accepts a connection whose descriptor is close-on-exec
// (fanout patch; see accept_cloexec_linux.go). Without accept4, ForkLock
// keeps a fork from happening between the accept and the flag.
func acceptCloexec(fd int) (int, syscall.Sockaddr, error) {
	syscall.ForkLock.RLock()
	defer syscall.ForkLock.RUnlock()
	nfd, sa, err := syscall.Accept(fd)
	if err == nil {
		syscall.CloseOnExec(nfd)
	}
	return nfd, sa, err
}
