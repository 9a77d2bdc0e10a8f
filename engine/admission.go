package engine

// admit decides whether an upgrade request may proceed, before any
// authentication: the browser origin check (cross-site WebSocket
// hijacking).
func (s *Server) admit(u *upgradeState) error {
	host := u.host
	if u.targetHost != nil {
		host = u.targetHost
	}
	if len(u.origin) > 0 && !s.originAllowed(u.origin, host) {
		return errOriginForbidden
	}
	return nil
}
