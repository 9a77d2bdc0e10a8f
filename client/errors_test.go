package client

import (
	"errors"
	"net/http"
	"testing"
)

func TestHandshakeErrorIs(t *testing.T) {
	tests := []struct {
		status    int
		want      error
		permanent bool
	}{
		{http.StatusBadRequest, ErrBadRequest, true},
		{http.StatusUnauthorized, ErrUnauthorized, true},
		{http.StatusForbidden, ErrForbidden, true},
		{http.StatusRequestEntityTooLarge, ErrTooLarge, false},
		{http.StatusTooManyRequests, ErrRateLimited, false},
		{http.StatusServiceUnavailable, ErrUnavailable, false},
	}
	for _, tt := range tests {
		e := &HandshakeError{StatusCode: tt.status}
		if !errors.Is(e, tt.want) {
			t.Errorf("HTTP %d: not %v", tt.status, tt.want)
		}
		if errors.Is(e, ErrInternal) {
			t.Errorf("HTTP %d matches ErrInternal", tt.status)
		}
		if e.permanent() != tt.permanent {
			t.Errorf("HTTP %d: permanent %v", tt.status, e.permanent())
		}
	}
	// An error reply with the unavailable code matches its sentinel.
	if !errors.Is(&Error{Code: "unavailable", Message: "broker unavailable, retry later"}, ErrUnavailable) {
		t.Error("unavailable reply is not ErrUnavailable")
	}
}
