package engine

import (
	"context"
	"errors"

	"github.com/coder/websocket"
)

// Thin aliases keep coder/websocket and gorilla/websocket, both named
// websocket, usable from one test file.
const (
	websocket2Text   = websocket.MessageText
	websocket2Binary = websocket.MessageBinary
)

func websocket2Dial(ctx context.Context, url, subprotocol string) (*websocket.Conn, any, error) {
	c, resp, err := websocket.Dial(ctx, url, &websocket.DialOptions{Subprotocols: []string{subprotocol}})
	return c, resp, err
}

func websocket2CloseStatus(err error) int {
	var ce websocket.CloseError
	if errors.As(err, &ce) {
		return int(ce.Code)
	}
	return -1
}
