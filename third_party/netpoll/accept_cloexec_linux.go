// Copyright 2026 fanout authors. Licensed under the Apache License 2.0.

//go:build linux

package netpoll

import "syscall"

// acceptCloexec accepts a connection whose descriptor is close-on-exec from
// the start (fanout patch). With a plain accept(2), every socket a server
// accepts was inherited by any child process started meanwhile (os/exec
// closes nothing it was not told to): the child kept the socket open after
// the server closed it, and the epoll registration of the socket, which
// lives as long as any process holds it, went on reporting events for a
// descriptor number the server had since given to another connection.
func acceptCloexec(fd int) (int, syscall.Sockaddr, error) {
	return syscall.Accept4(fd, syscall.SOCK_CLOEXEC)
}
