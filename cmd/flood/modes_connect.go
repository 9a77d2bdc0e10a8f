package main

// Connect mode: the workers ramp --conns connections at --connect-rate per
// second (each worker its share), then the coordinator holds them for
// --duration. Each attempt is a TCP connect, a TLS handshake for wss://
// and the HTTP upgrade, bounded together by --connect-timeout; its time
// goes to the handshake histogram and a failure is counted by cause:
//
//	refused           TCP connect refused (RST, or an ICMP error)
//	timeout           --connect-timeout passed (SYN, TLS or upgrade unanswered)
//	status_NNN        the upgrade was answered with HTTP NNN
//	bad_handshake     a 101 that is not a valid upgrade (accept key, subprotocol)
//	eof, reset        the server closed or reset the connection mid-handshake
//	addr_unavailable  no local port left (use --source-ips)
//	too_many_files    the process ran out of descriptors (use --procs)
//	tls, dns, unreachable, addr_in_use, other
//
// Connections that are lost while held are counted by cause too: close_NNNN
// for a close frame with code NNNN, eof when the socket closed without
// one, read_timeout, protocol_error.

// holdsAfterReady reports whether the coordinator holds the connections
// after the ramp instead of starting a load phase.
func holdsAfterReady(mode string) bool { return mode == modeConnect }
